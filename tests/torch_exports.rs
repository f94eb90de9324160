//! Models written by today's PyTorch exporter (issue 16; `torch.onnx.export` defaults: the
//! dynamo exporter, opset 20, from eval mode; `scripts/make-torch-exports.py`): an MLP, a
//! CNN with PReLU and Dropout (eval export drops the Dropout, Flatten becomes Reshape), a
//! BN CNN ending in a spatial mean (the exporter folds eval BN into the convs; the mean is
//! ReduceMean). Each imports, computes PyTorch's outputs, analyzes, converts and trains on
//! the embedded digits. (tests/ort.rs runs them and their canonical forms in onnxruntime.)

mod common;

use common::{ecc, rel_err, values};
use ecc::analysis::{analyze, RuleSet};
use ecc::exec::{constant_tensor, Executor};
use ecc::import::{load_file, tensor::read_pb, ImportOptions};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch-export"
    ))
}

#[test]
fn pytorch_exports_import_match_analyze_convert_and_train() {
    // (model, ops ecc reads, rescalings found)
    let cases = [
        ("mlp", vec!["Gemm", "Relu", "Gemm"], 32),
        (
            "cnn-prelu",
            vec!["Conv", "PRelu", "MaxPool", "Reshape", "Gemm"],
            8,
        ),
        (
            "bn-mean",
            vec![
                "Conv",
                "Relu",
                "Conv",
                "Relu",
                "GlobalAveragePool",
                "Flatten",
                "Gemm",
            ],
            24,
        ),
    ];
    for (name, ops, h) in cases {
        let path = dir().join(format!("{name}.onnx"));
        let g = load_file(&path, &ImportOptions::default()).unwrap();
        let got_ops: Vec<&str> = g.nodes.iter().map(|n| n.op.onnx_name()).collect();
        assert_eq!(got_ops, ops, "{name}");
        // PyTorch's own outputs on its reference input.
        let data = dir().join(name).join("test_data_set_0");
        let x = constant_tensor(
            &read_pb(&data.join("input_0.pb")).unwrap(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let y = Executor::new(&g).unwrap().forward(&[x]).unwrap();
        let want = read_pb(&data.join("output_0.pb")).unwrap().as_f32();
        let err = rel_err(&values(&y[0]), &want);
        assert!(
            err <= 1e-5,
            "{name}: relative error {err:e} against PyTorch"
        );
        assert_eq!(
            analyze(&g, &RuleSet::default_rules()).rescalings(),
            h,
            "{name}"
        );
        let p = path.to_str().unwrap();
        let work = common::Scratch::new(&format!("torch-{name}"));
        let (code, out, err) = ecc(&["convert", p, "-o", work.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains(".ec.onnx"), "{out}");
        let (code, out, err) = ecc(&["train", p, "--epochs", "1", "--optimizer", "both"]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("ec-sgd") && out.contains("test acc"), "{out}");
    }
}
