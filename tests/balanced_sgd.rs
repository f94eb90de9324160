//! Balanced SGD (docs/balanced-sgd.md): balancing maps equivalent models to the same weights
//! (the analogue of spec §9.4 for the balanced representative); the training step is a
//! function of the class (two equivalent models take equivalent steps); the f32 step of
//! `ecc train` matches the f64 reference; the step's direction, the gradient at the
//! balanced representative, matches finite differences of the loss in f64 and is orthogonal
//! to the orbit (spec §9.2), so to first order it moves across classes only.

mod common;
use candle_core::{Device, Tensor};
use common::mlp64::{f64s, residual_model, Mlp};
use common::{random_inputs, rel_err, values};
use ecc::analysis::{analyze_in, edit_runs, Analysis, BnMode, RuleSet};
use ecc::ec::balance::Balance;
use ecc::ec::step::Tensors;
use ecc::exec::Executor;
use ecc::ir::Graph;
use ecc::train::optim::{BalancedSgd, Optimizer};
use ecc::train::{optimizer_for, OptimizerKind, TrainConfig};
use ecc::zoo::{build, Spec};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

fn analysis(g: &Graph) -> Analysis {
    analyze_in(g, &RuleSet::default_rules(), BnMode::Training)
}

/// MLPs of unequal widths with and without biases, the residual branch, and CNNs with
/// pooling, flatten and BatchNorm.
fn models() -> Vec<(String, Graph)> {
    let mut out: Vec<(String, Graph)> = [
        ("mlp:6-5-5-3", true),
        ("mlp:5-7-4-2", false),
        ("mlp:4-3-6-6-2", true),
        ("cnn:1x8x8-c4-p-c6-p-10", true),
        ("cnn:2x8x8-c4-b-p-c3-5", true),
    ]
    .into_iter()
    .map(|(spec, bias)| {
        let g = build(&Spec::parse(spec).unwrap(), 1, bias).unwrap();
        (format!("{spec} bias={bias}"), g)
    })
    .collect();
    out.push(("residual branch".into(), residual_model(2)));
    out
}

/// `g` with every rescaling group multiplied by a factor drawn log-uniform in [1/4, 4].
fn rescaled(g: &Graph, a: &Analysis, seed: u64) -> Graph {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let c: Vec<f32> = (0..a.groups.len())
        .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
        .collect();
    let mut h = g.clone();
    a.rescale(&mut h, |k| c[k]);
    h
}

/// The same rescaling as [`rescaled`] on f64 tensors (exact equivalence).
fn rescaled_f64(g: &Graph, a: &Analysis, w: &Tensors, seed: u64) -> Tensors {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let c: Vec<f64> = (0..a.groups.len())
        .map(|_| 4f64.powf(rng.gen_range(-1.0..1.0)))
        .collect();
    let mut out = w.clone();
    for (k, members) in a.groups.iter().enumerate() {
        for e in members.iter().flat_map(|&u| a.edits(u)) {
            for r in edit_runs(&g.params[&e.param].dims, e) {
                let f = c[k].powi(e.exponent);
                out.get_mut(&e.param).unwrap()[r]
                    .iter_mut()
                    .for_each(|x| *x *= f);
            }
        }
    }
    out
}

fn max_rel(a: &Tensors, b: &Tensors) -> f64 {
    a.iter()
        .map(|(k, x)| {
            let y = &b[k];
            let d: f64 = x.iter().zip(y).map(|(p, q)| (p - q).powi(2)).sum();
            let n: f64 = x.iter().map(|p| p * p).sum();
            (d / n.max(1e-300)).sqrt()
        })
        .fold(0.0, f64::max)
}

#[test]
fn balancing_maps_equivalent_models_to_the_same_weights() {
    for (name, g) in models() {
        let a = analysis(&g);
        assert!(!a.groups.is_empty(), "{name}: no rescaling");
        let plan = Balance::new(&g, &a).unwrap();
        let h = rescaled(&g, &a, 7);
        let mut wg = f64s(&g);
        let mut wh = rescaled_f64(&g, &a, &wg, 7);
        let before = plan.norm_f64(&wg).min(plan.norm_f64(&wh));
        let (n1, left1) = plan.balance_f64(&mut wg, 1e-13, 100_000);
        let (n2, left2) = plan.balance_f64(&mut wh, 1e-13, 100_000);
        assert!(
            left1 <= 1e-13 && left2 <= 1e-13,
            "{name}: not balanced after {n1}/{n2} iterations ({left1:e}, {left2:e})"
        );
        let err = max_rel(&wg, &wh);
        assert!(
            err <= 1e-9,
            "{name}: equivalent models balance apart ({err:e})"
        );
        // The balanced model is the orbit's least (weighted) norm and has I_k = O_k.
        assert!(
            plan.norm_f64(&wg) <= before * (1.0 + 1e-12),
            "{name}: the norm grew"
        );
        let (inn, out) = plan.pass_f64(&mut wg.clone(), None);
        for (k, (i, o)) in inn.iter().zip(&out).enumerate() {
            assert!(
                (i - o).abs() <= 1e-9 * (i + o),
                "{name}: group {k} I {i} O {o}"
            );
        }
        // The same in f32 on the graph, and the function is unchanged.
        let mut b = g.clone();
        let (_, left) = plan.balance(&mut b, 1e-6, 100_000);
        assert!(left <= 1e-6, "{name}: f32 balancing stopped at {left:e}");
        let x = random_inputs(&g, 4, 3);
        let y0 = values(&Executor::new(&g).unwrap().forward(&x).unwrap()[0]);
        let y1 = values(&Executor::new(&b).unwrap().forward(&x).unwrap()[0]);
        let e = rel_err(&y0, &y1);
        assert!(e <= 1e-5, "{name}: balancing changed the outputs by {e:e}");
        // An imbalanced model is not already balanced (the test can fail).
        let (hi, ho) = plan.pass_f64(&mut f64s(&h), None);
        let worst = Balance::step_of(&hi, &ho).1;
        assert!(
            worst > 1e-3,
            "{name}: the rescaled model was already balanced"
        );
    }
}

/// Parameters of an executor as f32 vectors by name.
fn params_of(ex: &Executor) -> HashMap<String, Vec<f32>> {
    ex.params()
        .iter()
        .map(|(k, v)| (k.clone(), values(v.as_tensor())))
        .collect()
}

#[test]
fn the_training_step_is_a_function_of_the_class() {
    for (name, g) in models() {
        let a = analysis(&g);
        let h = rescaled(&g, &a, 11);
        let cfg = TrainConfig {
            optimizer: OptimizerKind::BalancedSgd,
            skeleton_init: false,
            momentum: 0.9,
            weight_decay: 1e-3,
            ..Default::default()
        };
        let run = |m: &Graph| {
            let (start, mut opt) = optimizer_for(m, &cfg).unwrap();
            let ex = Executor::new(&start).unwrap();
            let x = random_inputs(m, 8, 5).remove(0);
            let classes = m.shapes[&m.outputs[0].name]
                .dims
                .last()
                .copied()
                .unwrap_or(1);
            let y = Tensor::new(
                (0..8u32).map(|i| i % classes as u32).collect::<Vec<_>>(),
                &Device::Cpu,
            )
            .unwrap();
            for s in 0..3 {
                ecc::train::step(&ex, opt.as_mut(), &x, &y, s, 0.05).unwrap();
            }
            (params_of(&ex), values(&ex.forward(&[x]).unwrap()[0]))
        };
        let ((pg, yg), (ph, yh)) = (run(&g), run(&h));
        for (k, v) in &pg {
            let e = rel_err(v, &ph[k]);
            assert!(e <= 1e-4, "{name}: '{k}' differs by {e:e} after 3 steps");
        }
        let e = rel_err(&yg, &yh);
        assert!(e <= 1e-5, "{name}: outputs differ by {e:e} after 3 steps");
        // Plain SGD is not a function of the class: the same runs end apart.
        let sgd = TrainConfig {
            optimizer: OptimizerKind::Sgd,
            ..cfg.clone()
        };
        let run_sgd = |m: &Graph| {
            let (start, mut opt) = optimizer_for(m, &sgd).unwrap();
            let ex = Executor::new(&start).unwrap();
            let x = random_inputs(m, 8, 5).remove(0);
            let y = Tensor::new(vec![0u32; 8], &Device::Cpu).unwrap();
            for s in 0..3 {
                ecc::train::step(&ex, opt.as_mut(), &x, &y, s, 0.05).unwrap();
            }
            values(&ex.forward(&[x]).unwrap()[0])
        };
        let e = rel_err(&run_sgd(&g), &run_sgd(&h));
        assert!(
            e > 1e-4,
            "{name}: SGD's runs agree too ({e:e}): the test cannot fail"
        );
    }
}

#[test]
fn the_f32_step_matches_the_f64_reference() {
    for (name, g) in models().into_iter().filter(|(n, _)| !n.starts_with("cnn")) {
        let cfg = TrainConfig {
            optimizer: OptimizerKind::BalancedSgd,
            skeleton_init: false,
            momentum: 0.9,
            weight_decay: 1e-2,
            ..Default::default()
        };
        // From an imbalanced model, so that the iterations' factors are far from 1 (the
        // start `optimizer_for` gives is balanced already).
        let a = analysis(&g);
        let start = rescaled(&g, &a, 13);
        let plan = Balance::new(&start, &a).unwrap();
        let mut opt = BalancedSgd::new(
            plan.clone(),
            start.trainable_params(),
            cfg.momentum,
            cfg.weight_decay,
        );
        let mlp = Mlp::new(&start, 3);
        let ex = Executor::new(&start).unwrap();
        let mut w = f64s(&start);
        let mut m = Tensors::new();
        let mut norms = plan.pass_f64(&mut w.clone(), None);
        let lr = 0.05;
        for _ in 0..3 {
            let (_, grad) = mlp.loss_grad(&w);
            let grads: HashMap<String, Tensor> = grad
                .iter()
                .map(|(k, v)| {
                    let dims = start.params[k].dims.clone();
                    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    (k.clone(), Tensor::from_vec(f, dims, &Device::Cpu).unwrap())
                })
                .collect();
            opt.step(ex.params(), &grads, lr).unwrap();
            norms = plan.reference_step(&mut w, &mut m, &grad, &norms, (lr, 0.9, 1e-2));
        }
        let got = params_of(&ex);
        for (k, v) in &w {
            let want: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let e = rel_err(&got[k], &want);
            assert!(e <= 1e-5, "{name}: '{k}' is {e:e} from the f64 reference");
        }
    }
}

#[test]
fn the_step_direction_is_the_gradient_and_is_orthogonal_to_the_orbit() {
    for (name, g) in models().into_iter().filter(|(n, _)| !n.starts_with("cnn")) {
        let a = analysis(&g);
        let plan = Balance::new(&g, &a).unwrap();
        let mut w = f64s(&g);
        plan.balance_f64(&mut w, 1e-13, 100_000);
        let mlp = Mlp::new(&g, 5);
        let (_, grad) = mlp.loss_grad(&w);
        // Finite differences of the loss along random directions at the balanced model.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for _ in 0..5 {
            let d: Tensors = w
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.iter().map(|_| rng.gen_range(-1.0..1.0)).collect(),
                    )
                })
                .collect();
            let at = |t: f64| {
                let v: Tensors = w
                    .iter()
                    .map(|(k, x)| {
                        (
                            k.clone(),
                            x.iter().zip(&d[k]).map(|(a, b)| a + t * b).collect(),
                        )
                    })
                    .collect();
                mlp.loss_grad(&v).0
            };
            let h = 1e-6;
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let an: f64 = grad
                .iter()
                .map(|(k, gk)| gk.iter().zip(&d[k]).map(|(a, b)| a * b).sum::<f64>())
                .sum();
            assert!(
                (fd - an).abs() <= 1e-6 * an.abs().max(1e-3),
                "{name}: directional derivative {an:e}, finite differences {fd:e}"
            );
        }
        // Orthogonal to the orbit: for each group, Σ w·g over its in-slices equals the sum
        // over its out-slices (spec §9.2); the step moves across classes to first order.
        for (k, members) in a.groups.iter().enumerate() {
            let (mut up, mut down, mut scale) = (0f64, 0f64, 0f64);
            for e in members.iter().flat_map(|&u| a.edits(u)) {
                let dims = &g.params[&e.param].dims;
                for r in edit_runs(dims, e) {
                    let t: f64 = w[&e.param][r.clone()]
                        .iter()
                        .zip(&grad[&e.param][r])
                        .map(|(x, y)| x * y)
                        .sum();
                    if e.exponent > 0 {
                        up += t
                    } else {
                        down += t
                    }
                    scale += t.abs();
                }
            }
            assert!(
                (up - down).abs() <= 1e-10 * scale.max(1e-12),
                "{name}: group {k}: Σ w·g in {up:e}, out {down:e}"
            );
        }
    }
}
