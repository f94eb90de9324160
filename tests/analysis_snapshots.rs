//! insta snapshots of `ecc analyze` for the committed models and all 9 light zoo models.
//! Things a reviewer can check by reading them: resnet50's residual streams tied per stage
//! (rows marked `tied:` with one member per block of the stage); LRN blocking in alexnet,
//! zfnet512 and inception_v1; concat channel ranges (`placed at`) in squeezenet and the
//! inceptions; BatchNormalization scale invariance after every conv in resnet50,
//! inception_v2, densenet121 and shufflenet.

mod common;

use ecc::analysis::{analyze, report::Report, RuleSet};
use ecc::import::{load_file, ImportOptions};

fn report(label: &str, path: &std::path::Path) -> String {
    let g = load_file(path, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    Report::new(label, &g, &analyze(&g, &RuleSet::default_rules())).to_text(0)
}

#[test]
fn committed_models() {
    for p in common::committed_models() {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(
            format!("analyze_{name}"),
            report(&format!("models/{name}"), &p)
        );
    }
}

#[test]
fn zoo_models() {
    let Some(fx) = common::fixtures() else { return };
    for name in common::ZOO {
        let file = format!("light_{name}.onnx");
        insta::assert_snapshot!(
            format!("analyze_{file}"),
            report(&file, &fx.join("onnx/light").join(&file))
        );
    }
}
