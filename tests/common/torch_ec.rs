//! What scripts/make-torch-ec.py recorded (issue 17): PyTorch modules exported, the gradients
//! of ecc_torch's parametrization in f64, and the modules after three SGD steps on it; and
//! ecc's own three EC-SGD steps from the same start on the same batches.

use candle_core::{Device, Tensor};
use ecc::ir::Graph;
use std::collections::HashMap;
use std::path::PathBuf;

pub const NAMES: [&str; 2] = ["mlp", "rescnn"];

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch-ec")
}

pub struct Record {
    pub model: Graph,
    pub t: HashMap<String, Tensor>,
    pub lr: f64,
    pub momentum: f64,
    pub decay: f64,
}

pub fn record(name: &str) -> Record {
    let model = ecc::import::load_file(&dir().join(format!("{name}.onnx")), &Default::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let t =
        candle_core::safetensors::load(dir().join(name).join("record.safetensors"), &Device::Cpu)
            .unwrap();
    let cfg = t["cfg"].to_vec1::<f64>().unwrap();
    Record {
        model,
        lr: cfg[0],
        momentum: cfg[1],
        decay: cfg[2],
        t,
    }
}

/// Batch k: (x, y).
pub fn batch(r: &Record, k: usize) -> (Tensor, Tensor) {
    let x = r.t["x"].get(k).unwrap();
    let y = r.t["y"]
        .get(k)
        .unwrap()
        .to_dtype(candle_core::DType::U32)
        .unwrap();
    (x, y)
}

/// ecc's EC-SGD (update programs, from the canonical form: `--keep-function`) for three steps
/// on the recorded batches and configuration: the trained model, and the number of steps
/// where the guard engaged.
pub fn ec_sgd_three_steps(r: &Record) -> (Graph, usize) {
    use ecc::train::{logits_graph, optimizer_for, step, OptimizerKind, TrainConfig};
    let tg = logits_graph(&r.model);
    let cfg = TrainConfig {
        optimizer: OptimizerKind::EcSgd,
        lr: r.lr,
        momentum: r.momentum,
        weight_decay: r.decay,
        skeleton_init: false,
        ..Default::default()
    };
    let (start, mut opt) = optimizer_for(&tg, &cfg).unwrap();
    let ex = ecc::exec::Executor::new(&start).unwrap();
    let mut guarded = 0;
    for k in 0..3 {
        let (x, y) = batch(r, k);
        guarded += step(&ex, opt.as_mut(), &x, &y, k as u64, r.lr)
            .unwrap()
            .guarded as usize;
    }
    let mut trained = start.clone();
    ex.write_back(&mut trained).unwrap();
    (trained, guarded)
}
