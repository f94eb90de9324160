//! The EC pass: gauge normalization preserves the function, is canonical (a rescaled copy
//! normalizes to the same weights), fixes every designated weight to magnitude 1; and
//! spec §9.2, gradient balance at every rescalable unit.

mod common;

use candle_core::Var;
use common::{fixtures, rel_err, values};
use ecc::analysis::{analyze, analyze_in, edit_runs, Analysis, BnMode, RuleSet};
use ecc::ec::convert_with;
use ecc::exec::Executor;
use ecc::import::{load_file, ImportOptions};
use ecc::ir::Graph;
use rand::{Rng, SeedableRng};

fn models() -> Vec<(String, Graph)> {
    let mut v: Vec<(String, Graph)> = common::committed_models()
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                load_file(&p, &ImportOptions::default()).unwrap(),
            )
        })
        .collect();
    // BatchNormalization after every conv (training mode: star blocks), residual streams.
    for spec in [
        "resnet:3x16x16-n1",
        "plain:3x16x16-n1",
        "resnet:3x16x16-n1-w4.8.8",
    ] {
        let mut g = ecc::zoo::build(&ecc::zoo::Spec::parse(spec).unwrap(), 3, false).unwrap();
        // BN scales, biases and running statistics away from their fresh values, so the
        // canonical form has something to preserve.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let bn: Vec<Vec<String>> = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, ecc::ir::Op::BatchNorm { .. }))
            .map(|n| n.inputs[1..5].to_vec())
            .collect();
        for names in bn {
            for (k, name) in names.iter().enumerate() {
                if let ecc::ir::TensorData::F32(v) = &mut g.params.get_mut(name).unwrap().data {
                    for x in v.iter_mut() {
                        *x = if k == 3 {
                            rng.gen_range(0.5..2.0)
                        } else {
                            rng.gen_range(-1.0..1.0)
                        };
                    }
                }
            }
        }
        v.push((spec.to_string(), g));
    }
    // ConvTranspose and Resize (PyTorch's export of a small decoder).
    v.push((
        "torch decoder".into(),
        load_file(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/torch-export/decoder.onnx"
            )),
            &ImportOptions::default(),
        )
        .unwrap(),
    ));
    if let Some(fx) = fixtures() {
        let mut pnet = ImportOptions::default();
        pnet.input_shapes
            .insert("input_1".into(), vec![1, 24, 30, 3]);
        v.push((
            "pnet".into(),
            load_file(&fx.join("mtcnn/pnet.onnx"), &pnet).unwrap(),
        ));
        for n in ["rnet", "onet"] {
            v.push((
                n.into(),
                load_file(
                    &fx.join(format!("mtcnn/{n}.onnx")),
                    &ImportOptions::default(),
                )
                .unwrap(),
            ));
        }
    }
    v
}

/// The analysis `ecc convert` and `ecc train` use: BatchNormalization in training mode
/// (the same as inference mode on models without BN).
fn analyze_for(g: &Graph) -> Analysis {
    analyze_in(g, &RuleSet::default_rules(), BnMode::Training)
}

fn canonical(g: &Graph) -> (Analysis, Graph) {
    let a = analyze_for(g);
    let p = convert_with(g, a.clone());
    let (c, stats) = (p.canon.clone(), p.stats.clone());
    assert_eq!(stats.degenerate, 0);
    (a, c)
}

#[test]
fn canonical_form_preserves_the_function() {
    for (name, g) in models() {
        let (_, c) = canonical(&g);
        let xs = common::random_inputs(&g, 3, 1);
        let y0 = Executor::new(&g).unwrap().forward(&xs).unwrap();
        let y1 = Executor::new(&c).unwrap().forward(&xs).unwrap();
        let err = y0
            .iter()
            .zip(&y1)
            .map(|(a, b)| rel_err(&values(b), &values(a)))
            .fold(0.0, f64::max);
        println!("{name}: canonical vs original outputs, relative error {err:.1e}");
        assert!(err <= 5e-6, "{name}: {err:e}");
    }
}

#[test]
fn equivalent_models_have_the_same_canonical_form() {
    for (name, g) in models() {
        let (a, c) = canonical(&g);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let f: Vec<f32> = (0..a.rescalings())
            .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
            .collect();
        let mut moved = g.clone();
        a.rescale(&mut moved, |k| f[k]);
        let (_, c2) = canonical(&moved);
        let mut worst = 0f64;
        for (p, t) in &c.params {
            worst = worst.max(rel_err(&c2.params[p].as_f32(), &t.as_f32()));
        }
        let moved_by: f64 = g
            .params
            .iter()
            .map(|(p, t)| rel_err(&moved.params[p].as_f32(), &t.as_f32()))
            .fold(0.0, f64::max);
        println!("{name}: rescaled copy moved weights by {moved_by:.2}, canonical forms differ by {worst:.1e}");
        assert!(moved_by > 0.1, "{name}: the rescaling did nothing");
        assert!(worst <= 2e-6, "{name}: canonical forms differ by {worst:e}");
    }
}

#[test]
fn designated_weights_have_magnitude_one() {
    for (name, g) in models() {
        let a = analyze_for(&g);
        let p = convert_with(&g, a.clone());
        let c = &p.canon;
        let mut n = 0;
        for b in &p.basis.blocks {
            for d in b.units.iter().map(|u| &u.designated) {
                let w = c.params[&d.param].get_f32(d.index);
                assert!(
                    (w.abs() - 1.0).abs() <= 1e-5,
                    "{name}: designated {d:?} is {w}"
                );
                assert_eq!(
                    w.signum(),
                    g.params[&d.param].get_f32(d.index).signum(),
                    "sign kept"
                );
                n += 1;
            }
        }
        println!(
            "{name}: {n} designated weights at magnitude 1 in {} blocks",
            p.basis.blocks.len()
        );
        assert!(n > 0, "{name}: no designated weight: nothing was checked");
    }
}

/// Spec §9.2: the loss's derivative along each unit's orbit is zero, i.e. the sum of w*g
/// over the unit's multiplied slices equals the sum over its divided slices.
#[test]
fn gradient_balance_at_every_unit() {
    for (name, g) in models() {
        let a = analyze(&g, &RuleSet::default_rules());
        let ex = Executor::new(&g).unwrap();
        let xs = common::random_inputs(&g, 4, 2);
        let ys = ex.forward(&xs).unwrap();
        // Any smooth loss of the outputs will do.
        let mut loss = ys[0].sqr().unwrap().sum_all().unwrap();
        for y in &ys[1..] {
            loss = (loss + y.sqr().unwrap().sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        let flat =
            |v: &Var| -> Vec<f32> { v.as_tensor().flatten_all().unwrap().to_vec1().unwrap() };
        let mut cache: std::collections::HashMap<String, (Vec<f32>, Vec<f32>)> = Default::default();
        let mut worst = 0f64;
        let mut checked = 0;
        for (k, members) in a.groups.iter().enumerate() {
            let (mut up, mut down, mut scale) = (0f64, 0f64, 0f64);
            for &u in members {
                for e in a.edits(u) {
                    let var = &ex.params()[&e.param];
                    let (w, gr) = cache.entry(e.param.clone()).or_insert_with(|| {
                        let gt = grads
                            .get(var.as_tensor())
                            .map(|t| t.flatten_all().unwrap().to_vec1().unwrap());
                        (flat(var), gt.unwrap_or_else(|| vec![0.0; var.elem_count()]))
                    });
                    for r in edit_runs(&g.params[&e.param].dims, e) {
                        let s: f64 = r.map(|i| w[i] as f64 * gr[i] as f64).sum();
                        scale += s.abs();
                        if e.exponent > 0 {
                            up += s;
                        } else {
                            down += s;
                        }
                    }
                }
            }
            let err = (up - down).abs() / scale.max(1e-12);
            worst = worst.max(err);
            checked += 1;
            assert!(err <= 1e-3, "{name}: group {k}: in {up} vs out {down}");
        }
        println!(
            "{name}: gradient balance at {checked} groups, worst relative imbalance {worst:.1e}"
        );
    }
}
