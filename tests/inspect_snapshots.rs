//! insta snapshots of `ecc inspect` for the committed models and two zoo models. A change
//! in a snapshot is reviewed, never accepted blindly.

mod common;

use ecc::import::{load_file, ImportOptions};
use ecc::inspect::Report;

fn report(label: &str, path: &std::path::Path) -> Report {
    let g = load_file(path, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    Report::new(label, &g)
}

#[test]
fn committed_models() {
    for p in common::committed_models() {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let r = report(&format!("models/{name}"), &p);
        insta::assert_snapshot!(format!("inspect_{name}"), r.to_text());
    }
}

#[test]
fn committed_model_json() {
    let p = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/cnn-mnist.onnx"
    ));
    insta::assert_json_snapshot!("inspect_cnn_json", report("models/cnn-mnist.onnx", p));
}

#[test]
fn zoo_models() {
    let Some(fx) = common::fixtures() else { return };
    for name in ["light_bvlc_alexnet.onnx", "light_resnet50.onnx"] {
        let r = report(name, &fx.join("onnx/light").join(name));
        insta::assert_snapshot!(format!("inspect_{name}"), r.to_text());
    }
}
