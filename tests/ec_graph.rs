//! The EC graph (issue 17, docs/ec-graph.md): the canonical model with the path coordinates
//! as its trainable tensors. It computes the original function; autodiff through it is the
//! ICR of `ec::step` (f64); SGD with momentum on it is EC-SGD; folding it gives the weights
//! back; it survives export and import. (onnxruntime and the ONNX checker run it in
//! tests/ort.rs.)

mod common;

use candle_core::{DType, Tensor};
use ecc::ec::graph::{build, fold, p_name, v_name};
use ecc::ec::step::{EcStep, Tensors};
use ecc::exec::Executor;
use ecc::import::{load_file, ImportOptions};
use ecc::ir::Graph;
use std::path::Path;

fn fixture(rel: &str) -> Graph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    load_file(&p, &ImportOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The committed models, PyTorch's exports (BN in training form, a residual net with BN
/// folded: a DAG block, PReLU, the decoder), ecc's own BN ResNet, and mtcnn when fetched.
fn models() -> Vec<(String, Graph)> {
    let no = ImportOptions::default();
    let mut out: Vec<(String, Graph)> = common::committed_models()
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            (name, load_file(&p, &no).unwrap())
        })
        .collect();
    for rel in [
        "tests/fixtures/bn-resnet/model-eval.onnx",
        "tests/fixtures/bn-resnet/model-train.onnx",
        "tests/fixtures/torch-export/mlp.onnx",
        "tests/fixtures/torch-export/cnn-prelu.onnx",
        "tests/fixtures/torch-export/bn-mean.onnx",
        "tests/fixtures/torch-export/decoder.onnx",
    ] {
        out.push((rel.to_string(), fixture(rel)));
    }
    // Trained one epoch on the digits: a fresh BN net in inference form is nearly constant.
    let digits = ecc::data::digits().unwrap();
    for spec in ["resnet:1x8x8-n1-w4.6.8", "plain:1x8x8-n1-w4.6.8"] {
        let g = ecc::zoo::build(&ecc::zoo::Spec::parse(spec).unwrap(), 3, true).unwrap();
        let cfg = ecc::train::TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let (g, _) = ecc::train::train(&g, &digits, &cfg, |_| {}).unwrap();
        out.push((spec.to_string(), g));
    }
    if let Some(fx) = common::fixtures() {
        for name in ["pnet", "rnet", "onet"] {
            let mut o = ImportOptions::default();
            if name == "pnet" {
                o.input_shapes.insert("input_1".into(), vec![1, 14, 14, 3]);
            }
            let g = load_file(&fx.join(format!("mtcnn/{name}.onnx")), &o).unwrap();
            out.push((format!("mtcnn-{name}"), g));
        }
    }
    out
}

use common::{outputs, worst};

/// Function preserved (<= 1e-5 relative), in ecc, and after export and import; the fold
/// gives back the canonical weights; the trainable tensors are the coordinates.
#[test]
fn the_ec_graph_computes_the_models_function_and_folds_back() {
    for (name, g) in models() {
        let conv = ecc::ec::convert(&g);
        let ecg = build(&conv.canon, &conv.basis).unwrap();
        let xs = common::random_inputs(&g, 3, 11);
        let want = outputs(&g, &xs);
        let got = outputs(&ecg, &xs);
        let e1 = worst(&got, &want);
        let bytes = ecc::export::to_bytes(&ecg).unwrap();
        let mut o = ImportOptions::default();
        if name == "mtcnn-pnet" {
            o.input_shapes.insert("input_1".into(), vec![1, 14, 14, 3]);
        }
        let back = ecc::import::load_bytes(&bytes, &o)
            .unwrap_or_else(|e| panic!("{name}: re-import: {e}"));
        let e2 = worst(&outputs(&back, &xs), &want);
        // Import keeps the coordinates as the parameters (nothing folded into copies).
        assert_eq!(
            back.params.keys().collect::<Vec<_>>(),
            ecg.params.keys().collect::<Vec<_>>(),
            "{name}: re-imported parameters"
        );
        assert_eq!(back.trainable_params(), ecg.trainable_params(), "{name}");
        let folded = fold(&back).unwrap();
        assert_eq!(
            folded.params.keys().collect::<Vec<_>>(),
            conv.canon.params.keys().collect::<Vec<_>>(),
            "{name}: the fold has the model's parameters"
        );
        let mut e3 = 0f64;
        for (k, c) in &conv.canon.params {
            e3 = e3.max(common::rel_err(&folded.params[k].as_f32(), &c.as_f32()));
        }
        let e4 = worst(&outputs(&folded, &xs), &want);
        // Every block tensor is computed; its coordinates and the V's are parameters.
        let trainable = ecg.trainable_params();
        for (bi, b) in conv.basis.blocks.iter().enumerate() {
            assert!(trainable.contains(&v_name(bi)), "{name}: block {bi}");
            for t in b.tensors() {
                if p_name(t) != t.param {
                    assert!(!ecg.params.contains_key(&t.param), "{name}: {}", t.param);
                }
                assert!(trainable.contains(&p_name(t)), "{name}: {}", t.param);
            }
        }
        let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{name}: outputs all zero");
        println!(
            "{name}: {} blocks; EC graph vs model {e1:.1e}, after export+import {e2:.1e}; folded weights vs canonical {e3:.1e}, folded model {e4:.1e}",
            conv.basis.blocks.len()
        );
        assert!(!conv.basis.blocks.is_empty(), "{name}: no block");
        assert!(e1 <= 1e-5 && e2 <= 1e-5 && e4 <= 1e-5, "{name}");
        assert!(e3 <= 1e-6, "{name}: {e3}");
    }
}

fn grads_f64(ex: &Executor, xs: &[Tensor]) -> Tensors {
    let ys = ex.forward(xs).unwrap();
    let mut l = ys[0].sqr().unwrap().sum_all().unwrap();
    for y in &ys[1..] {
        l = (l + y.sqr().unwrap().sum_all().unwrap()).unwrap();
    }
    let store = l.backward().unwrap();
    ex.params()
        .iter()
        .map(|(k, v)| {
            let g = store
                .get(v.as_tensor())
                .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
                .unwrap_or_else(|| vec![0.0; v.elem_count()]);
            (k.clone(), g)
        })
        .collect()
}

fn f64_params(g: &Graph) -> Tensors {
    g.params
        .iter()
        .map(|(k, c)| (k.clone(), c.as_f32().iter().map(|&x| x as f64).collect()))
        .collect()
}

/// Autodiff w.r.t. the EC graph's tensors (f64) is the ICR of `ec::step` at the weights
/// the graph stands for, and the plain gradient for the parameters outside every block.
#[test]
fn autodiff_through_the_ec_graph_is_the_inverse_chain_rule_in_f64() {
    for (name, g) in models() {
        let conv = ecc::ec::convert(&g);
        let ecg = build(&conv.canon, &conv.basis).unwrap();
        let step = EcStep::new(&conv.basis);
        let xs: Vec<Tensor> = common::random_inputs(&g, 2, 4)
            .iter()
            .map(|x| x.to_dtype(DType::F64).unwrap())
            .collect();
        let ex = Executor::with_dtype(&ecg, DType::F64).unwrap();
        let ga = grads_f64(&ex, &xs);
        // The weights the EC graph's (f32) coordinates stand for, and their gradients.
        let e = f64_params(&ecg);
        let mut p = Tensors::new();
        for t in conv.basis.blocks.iter().flat_map(|b| b.tensors()) {
            p.insert(t.param.clone(), e[&p_name(t)].clone());
        }
        let q: Vec<Vec<f64>> = (0..conv.basis.blocks.len())
            .map(|b| e[&v_name(b)].clone())
            .collect();
        let w = step.weights_from(&f64_params(&conv.canon), &p, &q);
        let exc = Executor::with_dtype(&conv.canon, DType::F64).unwrap();
        for (k, var) in exc.params() {
            let t = Tensor::from_vec(w[k].clone(), var.dims(), exc.device()).unwrap();
            var.set(&t).unwrap();
        }
        let gw = grads_f64(&exc, &xs);
        let icr = step.icr(&w, &gw);
        let rel = |a: &[f64], b: &[f64]| {
            let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
            a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        let mut worst = 0f64;
        let coord: std::collections::HashMap<&str, String> = conv
            .basis
            .blocks
            .iter()
            .flat_map(|b| b.tensors())
            .map(|t| (t.param.as_str(), p_name(t)))
            .collect();
        for (k, d) in &icr.dp {
            let err = rel(&ga[&coord[k.as_str()]], d);
            assert!(err <= 1e-6, "{name}: dL/dp of {k}: {err:e}");
            worst = worst.max(err);
        }
        for (b, d) in icr.dv.iter().enumerate() {
            let err = rel(&ga[&v_name(b)], d);
            assert!(err <= 1e-6, "{name}: dL/dq of block {b}: {err:e}");
            worst = worst.max(err);
        }
        for (k, gk) in &gw {
            if ga.contains_key(k) {
                let err = rel(&ga[k], gk);
                assert!(err <= 1e-9, "{name}: {k} outside the blocks: {err:e}");
            }
        }
        println!("{name}: autodiff vs ICR, worst {worst:.1e}");
    }
}

/// Three steps of SGD (momentum 0.9, weight decay on p only) on the EC graph, through
/// candle's autograd, and three EC-SGD steps (the update programs) from the canonical model
/// on the same batches: the same weights (<= 1e-5 relative), the guard never engaged.
#[test]
fn sgd_on_the_ec_graph_is_ec_sgd() {
    use ecc::train::{logits_graph, optimizer_for, step, OptimizerKind, TrainConfig};
    let cases: Vec<(String, Graph)> = models()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("mtcnn") && !n.contains("decoder"))
        .collect();
    for (name, g) in cases {
        let tg = logits_graph(&g);
        let classes = ecc::train::classes(&tg);
        let batch = |k: u64| {
            let x = common::random_inputs(&tg, 8, 30 + k).remove(0);
            let y: Vec<u32> = (0..8)
                .map(|i| ((i * 7 + k as usize * 3) % classes) as u32)
                .collect();
            let y = Tensor::new(y, x.device()).unwrap();
            (x, y)
        };
        // A learning rate at which the first step moves no V coordinate by more than 1%:
        // path-space SGD at a weight-space rate diverges on trained models (spec §13).
        let conv = ecc::ec::convert(&tg);
        let lr = {
            let ex = Executor::new(&conv.canon).unwrap();
            let (x, y) = batch(0);
            let g = common::ce_grads(&ex, &x, &y);
            let w = f64_params(&conv.canon);
            common::calm_lr(&EcStep::new(&conv.basis), &w, &g, 0.01).min(0.01)
        };
        let cfg = |optimizer| TrainConfig {
            optimizer,
            lr,
            momentum: 0.9,
            weight_decay: 1e-3,
            skeleton_init: false,
            ..Default::default()
        };
        let (start, mut ec_opt) = optimizer_for(&tg, &cfg(OptimizerKind::EcSgd)).unwrap();
        assert_eq!(
            start.params, conv.canon.params,
            "{name}: EC-SGD starts at the canonical form"
        );
        // The EC graph as a user has it: written, then read back.
        let ecg = build(&conv.canon, &conv.basis).unwrap();
        let ecg = ecc::import::load_bytes(
            &ecc::export::to_bytes(&ecg).unwrap(),
            &ImportOptions::default(),
        )
        .unwrap();
        let (ecg, mut sgd) = optimizer_for(&ecg, &cfg(OptimizerKind::Sgd)).unwrap();
        let (ex_ec, ex_g) = (Executor::new(&start).unwrap(), Executor::new(&ecg).unwrap());
        for k in 0..3u64 {
            let (x, y) = batch(k);
            let a = step(&ex_ec, ec_opt.as_mut(), &x, &y, k, lr).unwrap();
            let b = step(&ex_g, sgd.as_mut(), &x, &y, k, lr).unwrap();
            assert!(!a.guarded, "{name}: the guard engaged at step {k}");
            assert!(
                (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs().max(1.0),
                "{name}: step {k} losses {} vs {}",
                a.loss,
                b.loss
            );
        }
        let mut trained_ec = start.clone();
        ex_ec.write_back(&mut trained_ec).unwrap();
        let mut trained_g = ecg.clone();
        ex_g.write_back(&mut trained_g).unwrap();
        let folded = fold(&trained_g).unwrap();
        let (mut worst, mut moved) = (0f64, 0f64);
        for (k, c) in &trained_ec.params {
            let (a, b) = (folded.params[k].as_f32(), c.as_f32());
            worst = worst.max(common::rel_err(&a, &b));
            moved = moved.max(common::rel_err(&b, &start.params[k].as_f32()));
        }
        println!("{name}: after 3 steps at lr {lr:.1e}, EC graph + SGD vs EC-SGD {worst:.1e} (the steps moved the weights by {moved:.1e})");
        assert!(worst <= 1e-5, "{name}: {worst:e}");
        assert!(moved > 1e-4, "{name}: the steps did not move the weights");
    }
}
