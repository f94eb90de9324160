//! ecc's plan applied to PyTorch modules by python/ecc_torch (issue 17), against ecc, on what
//! scripts/make-torch-ec.py recorded (committed; these tests need no PyTorch):
//! - the gradients of the parametrization w.r.t. its coordinates, in f64, are the ICR of
//!   `ec::step` at the same weights (<= 1e-6 relative);
//! - three PyTorch SGD steps (momentum, decay on everything but the q's) on the parametrized
//!   module, ecc's three EC-SGD steps, and three SGD steps on ecc's EC graph, on the same
//!   batches, give the same model (<= 1e-5 relative), the guard never engaged.
//!   (tests/ort.rs runs PyTorch's trained export and ecc's trained model in onnxruntime.)

mod common;

use candle_core::{DType, Tensor};
use common::torch_ec::{batch, ec_sgd_three_steps, record, NAMES};
use ecc::ec::step::{EcStep, Tensors};
use ecc::exec::Executor;

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn pytorch_gradients_of_the_parametrization_are_the_icr_in_f64() {
    for name in NAMES {
        let r = record(name);
        let tg = ecc::train::logits_graph(&r.model);
        let conv = ecc::ec::convert(&tg);
        let step = EcStep::new(&conv.basis);
        let ex = Executor::with_dtype(&conv.canon, DType::F64).unwrap();
        let (x, y) = batch(&r, 0);
        let g = common::ce_grads(&ex, &x.to_dtype(DType::F64).unwrap(), &y);
        let w: Tensors = conv
            .canon
            .params
            .iter()
            .map(|(k, c)| (k.clone(), c.as_f32().iter().map(|&v| v as f64).collect()))
            .collect();
        let icr = step.icr(&w, &g);
        let mut worst = 0f64;
        let mut n = 0;
        for (k, d) in &icr.dp {
            let t = r.t.get(&format!("grad.p.{k}")).unwrap_or_else(|| {
                panic!("{name}: no PyTorch gradient for {k}: the plan changed? run scripts/make-torch-ec.py")
            });
            let e = rel(&f64s(t), d);
            assert!(e <= 1e-6, "{name}: dL/dp of {k}: {e:e}");
            worst = worst.max(e);
            n += 1;
        }
        for (b, d) in icr.dv.iter().enumerate() {
            let e = rel(&f64s(&r.t[&format!("grad.q.{b}")]), d);
            assert!(e <= 1e-6, "{name}: dL/dq of block {b}: {e:e}");
            worst = worst.max(e);
        }
        let recorded = r.t.keys().filter(|k| k.starts_with("grad.p.")).count();
        assert_eq!(
            n, recorded,
            "{name}: the plan and the recording differ in tensors"
        );
        println!(
            "{name}: PyTorch's gradients of {n} coordinate tensors and {} q's vs ecc's ICR: worst {worst:.1e}",
            icr.dv.len()
        );
    }
}

#[test]
fn three_pytorch_steps_three_ec_sgd_steps_and_three_ec_graph_steps_agree() {
    use ecc::train::{logits_graph, optimizer_for, step, OptimizerKind, TrainConfig};
    for name in NAMES {
        let r = record(name);
        let (ec, guarded) = ec_sgd_three_steps(&r);
        assert_eq!(guarded, 0, "{name}: the guard engaged");
        // SGD on the EC graph, through candle's autograd, folded back.
        let tg = logits_graph(&r.model);
        let conv = ecc::ec::convert(&tg);
        let ecg = ecc::ec::graph::build(&conv.canon, &conv.basis).unwrap();
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Sgd,
            lr: r.lr,
            momentum: r.momentum,
            weight_decay: r.decay,
            ..Default::default()
        };
        let (ecg, mut sgd) = optimizer_for(&ecg, &cfg).unwrap();
        let ex = Executor::new(&ecg).unwrap();
        for k in 0..3 {
            let (x, y) = batch(&r, k);
            step(&ex, sgd.as_mut(), &x, &y, k as u64, r.lr).unwrap();
        }
        let mut trained = ecg.clone();
        ex.write_back(&mut trained).unwrap();
        let folded = ecc::ec::graph::fold(&trained).unwrap();
        let (mut w_torch, mut w_graph, mut moved) = (0f64, 0f64, 0f64);
        for (k, c) in &ec.params {
            let mine: Vec<f64> = c.as_f32().iter().map(|&v| v as f64).collect();
            let theirs = f64s(
                r.t.get(&format!("after.{k}"))
                    .unwrap_or_else(|| panic!("{name}: PyTorch's module has no '{k}'")),
            );
            let graph: Vec<f64> = folded.params[k]
                .as_f32()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let start: Vec<f64> = conv.canon.params[k]
                .as_f32()
                .iter()
                .map(|&v| v as f64)
                .collect();
            w_torch = w_torch.max(rel(&theirs, &mine));
            w_graph = w_graph.max(rel(&graph, &mine));
            if start.iter().any(|&v| v != 0.0) {
                moved = moved.max(rel(&mine, &start));
            }
        }
        println!(
            "{name} (lr {:.2e}): after 3 steps, PyTorch vs EC-SGD {w_torch:.1e}, EC graph + SGD vs EC-SGD {w_graph:.1e} (the steps moved the weights by {moved:.1e})",
            r.lr
        );
        assert!(w_torch <= 1e-5 && w_graph <= 1e-5, "{name}");
        assert!(moved > 1e-4, "{name}: the steps hardly moved the weights");
    }
}
