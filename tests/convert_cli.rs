//! `ecc convert`: the files it writes, the plan summary (snapshots), and its edge cases.

mod common;

use common::ecc;
use ecc::import::{load_file, ImportOptions};

fn scratch(name: &str) -> common::Scratch {
    common::Scratch::new(&format!("convert-{name}"))
}

#[test]
fn committed_models_convert() {
    for p in common::committed_models() {
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let dir = scratch(&name);
        let rel = format!("models/{name}.onnx");
        let (code, out, err) = ecc(&["convert", p.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        // The summary without the line naming the scratch folder.
        let summary: String = out
            .lines()
            .filter(|l| !l.starts_with("wrote"))
            .map(|l| l.replace(p.to_str().unwrap(), &rel) + "\n")
            .collect();
        insta::assert_snapshot!(format!("convert_{name}"), summary);
        let canon = load_file(
            &dir.join(format!("{name}.ec.onnx")),
            &ImportOptions::default(),
        )
        .unwrap();
        let orig = load_file(&p, &ImportOptions::default()).unwrap();
        assert_eq!(canon.nodes, orig.nodes);
        assert_ne!(canon.params, orig.params);
        let plan: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.ec.json"))).unwrap(),
        )
        .unwrap();
        for k in [
            "blocks",
            "coverage",
            "roles",
            "params",
            "rescalings",
            "class_dim",
            "params_in_blocks",
        ] {
            assert!(plan.get(k).is_some(), "{name}: plan lacks {k}");
        }
        // Every parameter has a role.
        assert_eq!(plan["roles"].as_object().unwrap().len(), orig.params.len());
        let blocks = plan["blocks"].as_array().unwrap();
        let paths: u64 = blocks
            .iter()
            .map(|b| b["basis_paths"].as_u64().unwrap())
            .sum();
        // Rows before a training-mode BatchNorm (radial directions) and their redundant
        // biases stay coordinates of their blocks, moved by the plain step
        // (docs/ec-dag.md §3), so they count among the basis paths but not in class_dim.
        let radial = plan["radial"].as_u64().unwrap() + plan["redundant_biases"].as_u64().unwrap();
        assert!(
            paths <= plan["class_dim"].as_u64().unwrap() + radial,
            "{name}: {paths} basis paths"
        );
    }
}

#[test]
fn a_model_without_rescalable_units_converts_unchanged() {
    let dir = scratch("single");
    let model = dir.join("single.onnx");
    let (code, _, err) = ecc(&["new", "mlp:6-3", "-o", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ecc(&[
        "convert",
        model.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("blocks       0 covering 0 parameters (0.0%)"),
        "{out}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("single.ec.json")).unwrap())
            .unwrap();
    assert_eq!(plan["coverage"], 0.0);
    let a = load_file(&model, &ImportOptions::default()).unwrap();
    let b = load_file(&dir.join("single.ec.onnx"), &ImportOptions::default()).unwrap();
    assert_eq!(a.params, b.params);
}

#[test]
fn an_unsupported_model_fails_with_the_importer_error() {
    let dir = scratch("bad");
    let bad = dir.join("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let (code, _, err) = ecc(&[
        "convert",
        bad.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not a valid ONNX model"), "{err}");
    assert!(!dir.join("bad.ec.onnx").exists());
}

/// The plan is written before the model and the old model is removed first: when the plan
/// cannot be written, no model is left beside a plan of another run (issue 14: convert wrote
/// the model first, so a failure or kill in between left a new model with an old plan).
#[test]
fn a_failed_plan_leaves_no_model_beside_an_old_plan() {
    let dir = scratch("order");
    let cnn = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cnn-mnist.onnx");
    let (code, _, err) = ecc(&["convert", cnn, "-o", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // The plan's place is taken by a folder: writing it fails.
    std::fs::remove_file(dir.join("cnn-mnist.ec.json")).unwrap();
    std::fs::create_dir(dir.join("cnn-mnist.ec.json")).unwrap();
    let (code, _, err) = ecc(&["convert", cnn, "-o", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cnn-mnist.ec.json"), "{err}");
    assert!(
        !dir.join("cnn-mnist.ec.onnx").exists(),
        "a model without its plan"
    );
}

/// `--ec-graph` writes the EC graph beside the plan; `ecc train` trains it with SGD (the
/// designated constants frozen: `ecc.frozen`); `--fold` turns the trained EC graph into an
/// ordinary model with the original's parameter names, which `ecc eval` reads.
#[test]
fn ec_graph_trains_in_ecc_and_folds_back() {
    let dir = scratch("ecg");
    let d = dir.to_str().unwrap();
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mlp-digits.onnx");
    let (code, out, err) = ecc(&["convert", model, "-o", d, "--ec-graph"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mlp-digits.ecg.onnx (the EC graph)"), "{out}");
    let ecg = dir.join("mlp-digits.ecg.onnx");
    let g = load_file(&ecg, &ImportOptions::default()).unwrap();
    let frozen = g.metadata_names(ecc::ir::META_FROZEN);
    assert!(!frozen.is_empty() && frozen.iter().all(|f| !g.trainable_params().contains(f)));
    let (code, _, err) = ecc(&["train", ecg.to_str().unwrap(), "--optimizer", "ec-sgd"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("use --optimizer sgd"), "{err}");
    let trained = dir.join("trained.ecg.onnx");
    let (code, _, err) = ecc(&[
        "train",
        ecg.to_str().unwrap(),
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--lr",
        "1e-9",
        "--momentum",
        "0",
        "-o",
        trained.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let t = load_file(&trained, &ImportOptions::default()).unwrap();
    for f in &frozen {
        assert_eq!(t.params[f], g.params[f], "{f} is frozen");
    }
    assert_ne!(t.params, g.params, "the coordinates moved");
    let (code, out, err) = ecc(&["convert", trained.to_str().unwrap(), "--fold", "-o", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("trained.folded.onnx"), "{out}");
    let folded = load_file(&dir.join("trained.folded.onnx"), &ImportOptions::default()).unwrap();
    let orig = load_file(std::path::Path::new(model), &ImportOptions::default()).unwrap();
    assert_eq!(
        folded.params.keys().collect::<Vec<_>>(),
        orig.params.keys().collect::<Vec<_>>()
    );
    assert_eq!(folded.nodes, orig.nodes);
    let (code, out, err) = ecc(&["eval", dir.join("trained.folded.onnx").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accuracy"), "{out}");
}
