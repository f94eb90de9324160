//! The plan `ecc convert` writes is complete (docs/plan-schema.md): one EC-SGD step
//! re-implemented here from the `.ec.json` alone (plus the parameter shapes), independently
//! of `src/ec`, gives the weights of ecc's f64 step, on chain, star and DAG blocks.

mod common;

use ecc::ec::step::{EcState, EcStep, StepConfig, Tensors};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::HashMap;

struct Tensor {
    param: String,
    /// (axis, chain per position); None: unchained.
    chain: Option<(usize, Vec<usize>)>,
    fixed: Vec<usize>,
}

struct Block {
    v: Vec<(String, usize)>,
    chains: Vec<Vec<usize>>,
    tensors: Vec<Tensor>,
}

fn blocks(plan: &Value) -> Vec<Block> {
    let us = |x: &Value| x.as_u64().unwrap() as usize;
    plan["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| Block {
            v: b["free_skeleton"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["param"].as_str().unwrap().to_string(), us(&s["index"])))
                .collect(),
            chains: b["chains"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_array().unwrap().iter().map(us).collect())
                .collect(),
            tensors: b["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| Tensor {
                    param: t["param"].as_str().unwrap().to_string(),
                    chain: t.get("chain_axis").map(|a| {
                        (
                            us(a),
                            t["chain"].as_array().unwrap().iter().map(us).collect(),
                        )
                    }),
                    fixed: t["fixed"].as_array().unwrap().iter().map(us).collect(),
                })
                .collect(),
        })
        .collect()
}

/// One step (docs/ec-dag.md §5; no momentum state carried over: the first step).
fn step(
    bs: &[Block],
    dims: &HashMap<String, Vec<usize>>,
    w: &mut Tensors,
    g: &Tensors,
    cfg: &StepConfig,
) {
    for b in bs {
        let chain_of = |t: &Tensor, i: usize| {
            t.chain.as_ref().map(|(a, c)| {
                let inner: usize = dims[&t.param][a + 1..].iter().product();
                c[(i / inner) % c.len()]
            })
        };
        let v: Vec<f64> = b.v.iter().map(|(p, i)| w[p][*i]).collect();
        let pc: Vec<f64> = b
            .chains
            .iter()
            .map(|m| m.iter().map(|&k| v[k]).product())
            .collect();
        let v_chain: Vec<Option<usize>> =
            b.v.iter()
                .map(|(p, i)| {
                    b.tensors
                        .iter()
                        .find(|t| &t.param == p)
                        .and_then(|t| chain_of(t, *i))
                })
                .collect();
        let mut sigma = vec![0f64; b.chains.len()];
        for t in &b.tensors {
            for i in 0..w[&t.param].len() {
                if !t.fixed.contains(&i) {
                    if let Some(c) = chain_of(t, i) {
                        sigma[c] += w[&t.param][i] * g[&t.param][i];
                    }
                }
            }
        }
        let q: Vec<f64> = (0..v.len())
            .map(|k| v[k] * v_chain[k].map_or(1.0, |c| pc[c]))
            .collect();
        let mut tk = vec![0f64; v.len()];
        for k in (0..v.len()).rev() {
            let (p, i) = &b.v[k];
            let mut x = v[k] * g[p][*i];
            for (c, m) in b.chains.iter().enumerate() {
                if m.contains(&k) {
                    x -= sigma[c];
                }
            }
            for d in k + 1..v.len() {
                if v_chain[d].is_some_and(|c| b.chains[c].contains(&k)) {
                    x -= tk[d];
                }
            }
            tk[k] = x;
        }
        let mut r = vec![0f64; v.len()];
        for k in 0..v.len() {
            let m = tk[k] / q[k];
            let rho = (1.0 - cfg.lr * m / q[k]).max(cfg.r_floor);
            let rp: f64 = v_chain[k].map_or(1.0, |c| b.chains[c].iter().map(|&j| r[j]).product());
            r[k] = rho / rp;
        }
        let rc: Vec<f64> = b
            .chains
            .iter()
            .map(|m| m.iter().map(|&k| r[k]).product())
            .collect();
        for t in &b.tensors {
            let gt = &g[&t.param];
            let n = w[&t.param].len();
            for i in 0..n {
                if t.fixed.contains(&i) {
                    continue;
                }
                let x = w[&t.param][i];
                let new = match chain_of(t, i) {
                    Some(c) => {
                        (x - cfg.lr * (gt[i] / pc[c] + cfg.weight_decay * x * pc[c]) / pc[c])
                            / rc[c]
                    }
                    None => x - cfg.lr * (gt[i] + cfg.weight_decay * x),
                };
                w.get_mut(&t.param).unwrap()[i] = new;
            }
        }
        for (k, (p, i)) in b.v.iter().enumerate() {
            w.get_mut(p).unwrap()[*i] *= r[k];
        }
    }
}

#[test]
fn the_step_from_the_plan_json_alone_equals_eccs() {
    let work = std::env::temp_dir().join(format!("ecc-plan-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bn-resnet/model-eval.onnx");
    let generated = work.join("resnet.onnx");
    let (code, _, err) = common::ecc(&[
        "new",
        "resnet:2x8x8-n1-w4.6.8",
        "-o",
        generated.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cnn = common::committed_models()
        .into_iter()
        .find(|p| p.ends_with("cnn-mnist.onnx"))
        .unwrap();
    for (name, model) in [
        ("chain (cnn-mnist)", cnn),
        ("star (BN ResNet)", generated),
        ("DAG (BN-folded ResNet)", fixture),
    ] {
        let out = work.join(name.split(' ').next().unwrap());
        let (code, _, err) = common::ecc(&[
            "convert",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        let stem = model.file_stem().unwrap().to_string_lossy().to_string();
        let plan: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.ec.json"))).unwrap(),
        )
        .unwrap();
        let canon =
            ecc::import::load_file(&out.join(format!("{stem}.ec.onnx")), &Default::default())
                .unwrap();
        let dims: HashMap<String, Vec<usize>> = canon
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.dims.clone()))
            .collect();
        let w0: Tensors = canon
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f32().into_iter().map(f64::from).collect()))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let g: Tensors = w0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter().map(|_| rng.gen_range(-1e-2..1e-2)).collect(),
                )
            })
            .collect();
        // ecc's step, from ecc's own conversion of the same file.
        let conv = ecc::ec::convert(&ecc::import::load_file(&model, &Default::default()).unwrap());
        let reference = EcStep::new(&conv.basis);
        let cfg = StepConfig {
            lr: common::calm_lr(&reference, &w0, &g, 1e-2),
            momentum: 0.0,
            weight_decay: 1e-3,
            r_floor: 0.1,
        };
        let mut want = w0.clone();
        reference.step(&mut want, &g, &mut EcState::default(), &cfg);
        let mut got = w0.clone();
        let bs = blocks(&plan);
        step(&bs, &dims, &mut got, &g, &cfg);
        let mut worst = 0f64;
        let mut moved = 0f64;
        for (k, xs) in &want {
            for (i, &x) in xs.iter().enumerate() {
                worst = worst.max((got[k][i] - x).abs() / x.abs().max(1e-12));
                moved = moved.max((x - w0[k][i]).abs() / w0[k][i].abs().max(1e-12));
            }
        }
        println!(
            "{name}: {} blocks, step from the plan vs ecc's: {worst:.1e} (largest move {moved:.1e})",
            bs.len()
        );
        assert!(moved > 1e-4, "{name}: the step did nothing");
        assert!(worst <= 1e-9, "{name}: {worst:e}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
