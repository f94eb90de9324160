//! Update programs against the f64 reference step, snapshots of their text, and the guard
//! through the program path.

mod common;

use candle_core::{Device, Tensor};
use ecc::analysis::{analyze, analyze_in, BnMode, RuleSet};
use ecc::ec::convert_with;
use ecc::ec::program::{text, ProgramRunner};
use ecc::ec::step::{EcState, EcStep, StepConfig, Tensors};
use ecc::exec::Executor;
use ecc::import::{load_file, ImportOptions};
use ecc::ir::Graph;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

fn models() -> Vec<(String, Graph)> {
    let mut v: Vec<(String, Graph)> = common::committed_models()
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().to_string(),
                load_file(&p, &ImportOptions::default()).unwrap(),
            )
        })
        .collect();
    if let Some(fx) = common::fixtures() {
        let mut o = ImportOptions::default();
        o.input_shapes.insert("input_1".into(), vec![1, 24, 30, 3]);
        v.push((
            "pnet".into(),
            load_file(&fx.join("mtcnn/pnet.onnx"), &o).unwrap(),
        ));
    }
    v
}

/// Generated models whose chained tensors are large enough for the multi-threaded update
/// paths, with chunks that start inside a row: chains along columns (a 48x1000 dense weight)
/// and along rows (a 64x64x3x3 conv weight chained by input channel, runs of 9).
fn large_models() -> Vec<(String, Graph)> {
    [
        "mlp:64-1000-48-10",
        "cnn:3x8x8-c64-c64-p-10",
        // Star blocks (BN in training mode): residual streams tied across blocks.
        "resnet:3x8x8-n2-w16.32.64",
        "plain:3x8x8-n1-w8.16.16",
    ]
    .iter()
    .map(|s| {
        let spec = ecc::zoo::Spec::parse(s).unwrap();
        (s.to_string(), ecc::zoo::build(&spec, 0, true).unwrap())
    })
    .collect()
}

#[test]
fn programs_match_the_reference_step() {
    for (name, g) in models().into_iter().chain(large_models()) {
        let a = analyze_in(&g, &RuleSet::default_rules(), BnMode::Training);
        let p = convert_with(&g, a.clone());
        let canon = p.canon.clone();
        let reference = EcStep::new(&p.basis);
        let mut runner = ProgramRunner::new(&p.basis).unwrap();
        let ex = Executor::new(&canon).unwrap();
        let mut w: Tensors = canon
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f32().into_iter().map(f64::from).collect()))
            .collect();
        let mut state = EcState::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        // A step size that keeps R near 1 on the first step.
        let g0: Tensors = w
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter().map(|_| rng.gen_range(-1e-2..1e-2)).collect(),
                )
            })
            .collect();
        let (_, v0) = reference.coordinates(&w);
        let fastest = reference
            .icr(&w, &g0)
            .dv
            .iter()
            .flatten()
            .zip(v0.iter().flatten())
            .fold(0f64, |m, (d, v)| m.max((d / v).abs()));
        let cfg = StepConfig {
            lr: 1e-2 / fastest,
            momentum: 0.9,
            weight_decay: 1e-3,
            r_floor: 0.1,
        };
        for step in 0..3 {
            let gs: Tensors = if step == 0 {
                g0.clone()
            } else {
                w.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.iter().map(|_| rng.gen_range(-1e-2..1e-2)).collect(),
                        )
                    })
                    .collect()
            };
            let gt: HashMap<String, Tensor> = gs
                .iter()
                .map(|(k, v)| {
                    let dims = canon.params[k].dims.clone();
                    (
                        k.clone(),
                        Tensor::from_vec(
                            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                            dims,
                            &Device::Cpu,
                        )
                        .unwrap(),
                    )
                })
                .collect();
            let r1 = reference.step(&mut w, &gs, &mut state, &cfg);
            let r2 = runner.step(ex.params(), &gt, &cfg).unwrap();
            assert_eq!(r1, r2, "{name}: guard counts differ");
        }
        let mut worst = 0f64;
        for k in reference.params() {
            let got = common::values(ex.params()[&k].as_tensor());
            let want: Vec<f32> = w[&k].iter().map(|&x| x as f32).collect();
            worst = worst.max(common::rel_err(&got, &want));
        }
        println!(
            "{name}: 3 program steps vs the f64 reference: relative error {worst:.1e} (lr {:.1e})",
            cfg.lr
        );
        assert!(worst <= 1e-6, "{name}: {worst:e}");
    }
}

#[test]
fn program_texts() {
    for (name, g) in models().into_iter().filter(|(n, _)| n != "pnet") {
        let a = analyze(&g, &RuleSet::default_rules());
        let p = convert_with(&g, a.clone());
        let text: String = p
            .basis
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| text(i, b))
            .collect();
        insta::assert_snapshot!(format!("program_{name}"), text);
    }
}

#[test]
fn the_guard_engages_through_the_program_without_inf_or_nan() {
    let p = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/mlp-digits.onnx"
    ));
    let g = load_file(p, &ImportOptions::default()).unwrap();
    let a = analyze(&g, &RuleSet::default_rules());
    let pl = convert_with(&g, a.clone());
    let canon = pl.canon.clone();
    let ex = Executor::new(&canon).unwrap();
    let mut runner = ProgramRunner::new(&pl.basis).unwrap();
    let x = common::random_inputs(&canon, 8, 3);
    let y = ex.forward(&x).unwrap();
    let loss = y[0].sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gt: HashMap<String, Tensor> = ex
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), grads.get(v.as_tensor()).unwrap().clone()))
        .collect();
    let cfg = StepConfig {
        lr: 1e6,
        momentum: 0.0,
        weight_decay: 0.0,
        r_floor: 0.1,
    };
    let guarded = runner.step(ex.params(), &gt, &cfg).unwrap();
    assert!(guarded > 0);
    assert_eq!(runner.guarded_steps, 1);
    for v in ex.params().values() {
        assert!(common::values(v.as_tensor()).iter().all(|x| x.is_finite()));
    }
}
