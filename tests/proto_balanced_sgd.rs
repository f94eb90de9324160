//! A prototype measurement for issue 15, not a method of ecc (no f64 reference step, no
//! invariance or finite-difference test yet): fine-tuning a trained MLP by SGD on the
//! *balanced representative* of its class, one of spec §13's directions. Before training
//! and after every step each rescaling group is rescaled by c = (|out|² / |in|²)^(1/4), the
//! minimizer of c²|in|² + |out|²/c² (ENorm's balance), in Jacobi sweeps (30 at the start, 2
//! after each step). Balancing maps equivalent networks to the same weights (the minimum
//! of the weight norm over the orbit is unique), so the step is a function of the class.
//! Compared with plain SGD, both without momentum, lr 0.05 and 0.01, 3 shuffles, one epoch
//! of MNIST from `models/mlp-mnist-sgd.onnx`. Run by hand (needs scripts/fetch-data.sh):
//!   cargo test --release --test proto_balanced_sgd -- --ignored --nocapture

mod common;
use candle_core::{Device, Tensor};
use ecc::analysis::{analyze, edit_runs, Analysis, RuleSet};
use ecc::exec::Executor;
use ecc::ir::Graph;
use ecc::train::*;
use std::collections::HashMap;

fn balance(g: &mut Graph, a: &Analysis, sweeps: usize) {
    for _ in 0..sweeps {
        let sq: HashMap<String, Vec<f64>> = g
            .params
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    c.as_f32().iter().map(|&x| (x as f64).powi(2)).collect(),
                )
            })
            .collect();
        let f: Vec<f32> = a
            .groups
            .iter()
            .map(|members| {
                let (mut up, mut dn) = (0f64, 0f64);
                for &u in members {
                    for e in a.edits(u) {
                        let s = &sq[&e.param];
                        for r in edit_runs(&g.params[&e.param].dims, e) {
                            let t: f64 = s[r].iter().sum();
                            if e.exponent > 0 {
                                up += t
                            } else {
                                dn += t
                            }
                        }
                    }
                }
                if up > 0.0 && dn > 0.0 {
                    (dn / up).powf(0.25) as f32
                } else {
                    1.0
                }
            })
            .collect();
        a.rescale(g, |k| f[k]);
    }
}

fn run(g0: &Graph, split: &ecc::data::Split, lr: f64, balanced: bool, seed: u64) -> (f64, f64) {
    let mut g = logits_graph(g0);
    let a = analyze(&g, &RuleSet::default_rules());
    if balanced {
        balance(&mut g, &a, 30);
    }
    let cfg = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        momentum: 0.0,
        ..Default::default()
    };
    let (_, mut opt) = optimizer_for(&g, &cfg).unwrap();
    let ex = Executor::new(&g).unwrap();
    let n = split.train.len();
    let f = split.train.features();
    let mut order: Vec<usize> = (0..n).collect();
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    for chunk in order.chunks(32) {
        let xs: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| split.train.x[i * f..(i + 1) * f].iter().copied())
            .collect();
        let x = Tensor::from_vec(xs, (chunk.len(), f), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(
            chunk.iter().map(|&i| split.train.y[i]).collect::<Vec<_>>(),
            chunk.len(),
            &Device::Cpu,
        )
        .unwrap();
        step(&ex, opt.as_mut(), &x, &y, 0, lr).unwrap();
        if balanced {
            ex.write_back(&mut g).unwrap();
            balance(&mut g, &a, 2);
            for (k, v) in ex.params() {
                v.set(&ecc::exec::constant_tensor(&g.params[k], &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
    }
    evaluate(&ex, &g, &split.test, 512).unwrap()
}

#[test]
#[ignore]
fn balanced_sgd_against_sgd_on_a_trained_mlp() {
    let d = common::data().unwrap();
    let split = ecc::data::load(&format!("mnist:{}", d.join("mnist").display())).unwrap();
    let g0 = ecc::import::load_file(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/mlp-mnist-sgd.onnx"
        )),
        &Default::default(),
    )
    .unwrap();
    let tg = logits_graph(&g0);
    let ex = Executor::new(&tg).unwrap();
    println!("given: {:?}", evaluate(&ex, &tg, &split.test, 512).unwrap());
    for lr in [0.05, 0.01] {
        for balanced in [false, true] {
            for seed in [0, 1, 2] {
                let t = std::time::Instant::now();
                let (l, acc) = run(&g0, &split, lr, balanced, seed);
                println!("lr {lr} balanced {balanced} seed {seed}: test loss {l:.4} acc {acc:.4} ({:.1}s)", t.elapsed().as_secs_f64());
            }
        }
    }
}
