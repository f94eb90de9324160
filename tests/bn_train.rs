//! BatchNormalization in training mode against an independent implementation (issue 12):
//! a small residual CNN with BatchNorm, built and stepped by PyTorch
//! (`scripts/make-bn-fixture.py`, files committed in tests/fixtures/bn-resnet/). One SGD step
//! (lr 0.1, no momentum, 64 images) in ecc gives PyTorch's weights, BN affine parameters and
//! running statistics.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{rel_err, values};
use ecc::exec::Executor;
use ecc::train::optim::Sgd;
use std::collections::{HashMap, HashSet};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bn-resnet");

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}/{name}"), &Device::Cpu).unwrap()
}

fn model(name: &str) -> ecc::ir::Graph {
    ecc::import::load_file(format!("{DIR}/{name}").as_ref(), &Default::default()).unwrap()
}

fn batch() -> (Tensor, Tensor) {
    let b = load("batch.safetensors");
    (b["x"].clone(), b["y"].to_dtype(DType::U32).unwrap())
}

#[test]
fn one_sgd_step_matches_pytorch_in_train_mode() {
    // PyTorch's TorchScript exporter in TrainingMode.TRAINING: BN with training_mode=1 and
    // the running statistics as two extra outputs, which ecc keeps itself.
    let g = model("model-train.onnx");
    let bns: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, ecc::ir::Op::BatchNorm { .. }))
        .collect();
    assert_eq!(bns.len(), 6);
    assert!(bns.iter().all(|n| n.outputs.len() == 1));
    let (x, y) = batch();
    let logits = &Executor::new(&g)
        .unwrap()
        .forward_train(std::slice::from_ref(&x), 0)
        .unwrap()[0];
    let want = &load("logits.safetensors")["train"];
    let e = rel_err(&values(logits), &values(want));
    assert!(e < 1e-5, "train-mode logits: relative error {e:.2e}");
    // The step of `ecc train` (the executor's tape for the backward pass), on a fresh copy.
    let ex = Executor::new(&g).unwrap();
    let mut sgd = Sgd::new(g.trainable_params(), 0.0, 0.0);
    ecc::train::step(&ex, &mut sgd, &x, &y, 0, 0.1).unwrap();
    let after = load("after.safetensors");
    let before = load("before.safetensors");
    assert_eq!(
        after.len(),
        ex.params().len(),
        "every parameter is compared"
    );
    let mut kinds = HashSet::new();
    let mut worst = 0f64;
    for (name, want) in &after {
        let got = values(ex.params()[name].as_tensor());
        let e = rel_err(&got, &values(want));
        worst = worst.max(e);
        // The issue asked for 1e-4; the README states the bound asserted here.
        assert!(e < 1e-6, "{name}: relative error {e:.2e} after the step");
        // The step moved it (so the comparison says something), except the conv bias right
        // before a training-mode BN: its gradient is zero (spec §11, a redundant bias).
        if name == "conv1.bias" {
            let moved = rel_err(&values(&before[name]), &values(want));
            assert!(moved < 1e-6, "the bias before BN moved by {moved:.1e}");
            continue;
        }
        let moved = rel_err(&values(&before[name]), &values(want));
        assert!(
            moved > 1e-5 && e < moved / 10.0,
            "{name}: moved {moved:.1e} in PyTorch's step, ecc's error {e:.1e}"
        );
        kinds.insert(name.rsplit('.').next().unwrap().to_string());
    }
    println!("one SGD step vs PyTorch's: worst relative error {worst:.1e}");
    for k in ["weight", "bias", "running_mean", "running_var"] {
        assert!(kinds.contains(k), "no {k} compared");
    }
}

#[test]
fn inference_mode_uses_running_statistics_and_reads_reducemean() {
    let (x, _) = batch();
    let want = &load("logits.safetensors")["eval"];
    // The training-form file run in inference mode, and the default exporter's file (BN
    // folded into the convs, ReduceMean for the average pool).
    for name in ["model-train.onnx", "model-eval.onnx"] {
        let g = model(name);
        let got = &Executor::new(&g)
            .unwrap()
            .forward(std::slice::from_ref(&x))
            .unwrap()[0];
        let e = rel_err(&values(got), &values(want));
        assert!(e < 1e-5, "{name}: eval logits relative error {e:.2e}");
    }
    // Inference mode leaves the running statistics alone; training mode moves them.
    let g = model("model-train.onnx");
    let ex = Executor::new(&g).unwrap();
    let rm = || values(ex.params()["bn1.running_mean"].as_tensor());
    let r0 = rm();
    ex.forward(std::slice::from_ref(&x)).unwrap();
    assert_eq!(rm(), r0);
    ex.forward_train(std::slice::from_ref(&x), 0).unwrap();
    assert_ne!(rm(), r0);
}

/// After training, the model exports as an ordinary inference model (BN with one output,
/// no training_mode), which ecc reads back to the same predictions.
#[test]
fn trained_bn_model_exports_in_inference_form() {
    let (x, _) = batch();
    let mut g = model("model-train.onnx");
    let ex = Executor::new(&g).unwrap();
    ex.forward_train(std::slice::from_ref(&x), 0).unwrap();
    let want = values(&ex.forward(std::slice::from_ref(&x)).unwrap()[0]);
    ex.write_back(&mut g).unwrap();
    let bytes = ecc::export::to_bytes(&g).unwrap();
    let back = ecc::import::load_bytes(&bytes, &Default::default()).unwrap();
    let got = values(&Executor::new(&back).unwrap().forward(&[x]).unwrap()[0]);
    assert_eq!(got, want);
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("training_mode"));
    let _ = Device::Cpu;
}
