//! Models written by today's PyTorch exporter (issue 16; `torch.onnx.export` defaults: the
//! dynamo exporter, opset 20, from eval mode; `scripts/make-torch-exports.py`): an MLP, a
//! CNN with PReLU and Dropout (eval export drops the Dropout, Flatten becomes Reshape), a
//! BN CNN ending in a spatial mean (the exporter folds eval BN into the convs; the mean is
//! ReduceMean), and a decoder with ConvTranspose and two Resizes (bilinear up, nearest down). Each imports, computes PyTorch's outputs, analyzes, converts and trains on
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
        (
            "decoder",
            vec![
                "Conv",
                "Relu",
                "ConvTranspose",
                "Relu",
                "Resize",
                "Conv",
                "Relu",
                "Resize",
                "GlobalAveragePool",
                "Flatten",
                "Gemm",
            ],
            18,
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

/// torchvision's resnet18, as `scripts/make-torchvision-resnet18.py` writes it into the
/// fixture cache (random weights from seed 0; 45 MB each, so not committed, and this test
/// says so and passes when the files are not there): the TorchScript export in training
/// form (BatchNormalization kept) and the default dynamo export from eval mode (BN folded
/// into the convs). Each imports at 3x32x32 (the convolutions do not depend on the input
/// size), analyzes (2,880 rescalings: every unit that does not enter a residual sum or the
/// logits), converts with a canonical form that computes the same outputs, and trains one
/// epoch on CIFAR-10-shaped data with SGD and EC-SGD: finite losses, weights moved.
/// tests/ort.rs runs both at 224x224 in onnxruntime.
#[test]
fn torchvision_resnet18_imports_analyzes_converts_and_trains() {
    use ecc::data::{Dataset, Split};
    use ecc::train::{train, OptimizerKind, TrainConfig};
    use rand::{Rng, SeedableRng};
    let dir = ecc::cache_dir().join("fixtures/torchvision");
    let models = [("resnet18-bn", "input"), ("resnet18-folded", "x")];
    if !models
        .iter()
        .all(|(m, _)| dir.join(format!("{m}.onnx")).is_file())
    {
        println!(
            "skipped: {} has no resnet18 exports (scripts/make-torchvision-resnet18.py writes them)",
            dir.display()
        );
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut set = |n: usize| Dataset {
        dims: vec![3, 32, 32],
        x: (0..n * 3 * 32 * 32)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect(),
        y: (0..n).map(|_| rng.gen_range(0..10)).collect(),
        black: vec![0.0; 3],
    };
    let split = Split {
        name: "cifar10-shaped".into(),
        classes: 10,
        train: set(32),
        test: set(16),
    };
    for (name, input) in models {
        let mut opts = ImportOptions::default();
        opts.input_shapes.insert(input.into(), vec![1, 3, 32, 32]);
        let g = load_file(&dir.join(format!("{name}.onnx")), &opts).unwrap();
        let a = analyze(&g, &RuleSet::default_rules());
        assert_eq!(a.rescalings(), 2880, "{name}");
        let t0 = std::time::Instant::now();
        let canon = ecc::ec::convert(&g).canon;
        let xs = common::random_inputs(&g, 2, 7);
        let y0 = Executor::new(&g).unwrap().forward(&xs).unwrap();
        let y1 = Executor::new(&canon).unwrap().forward(&xs).unwrap();
        let err = rel_err(&values(&y1[0]), &values(&y0[0]));
        println!(
            "{name}: {} rescalings, converted in {:.0} s, canonical vs original {err:.1e}",
            a.rescalings(),
            t0.elapsed().as_secs_f64()
        );
        assert!(err <= 5e-6, "{name}: {err:e}");
        for optimizer in [OptimizerKind::Sgd, OptimizerKind::EcSgd] {
            let cfg = TrainConfig {
                optimizer,
                epochs: 1,
                batch: 8,
                lr: 0.01,
                ..Default::default()
            };
            let t0 = std::time::Instant::now();
            let (trained, metrics) = train(&g, &split, &cfg, |_| {}).unwrap();
            let last = metrics.last().unwrap();
            println!(
                "{name} {optimizer:?}: train loss {:.3}, test loss {:.3} ({:.0} s)",
                last.train_loss,
                last.test_loss,
                t0.elapsed().as_secs_f64()
            );
            assert!(last.train_loss.is_finite() && last.test_loss.is_finite());
            let moved = g
                .params
                .iter()
                .any(|(k, p)| p.as_f32() != trained.params[k].as_f32());
            assert!(moved, "{name} {optimizer:?}: no weight moved");
        }
    }
}

/// One SGD step of the decoder (ConvTranspose with output_padding and a fused ReLU, a bilinear
/// and a nearest Resize) in ecc gives PyTorch's parameters: 16 images, lr 0.1, no momentum,
/// mean cross-entropy (`scripts/make-torch-exports.py` wrote decoder/step.safetensors).
#[test]
fn decoder_sgd_step_matches_pytorch() {
    use ecc::train::optim::{Optimizer, Sgd};
    let g = load_file(&dir().join("decoder.onnx"), &ImportOptions::default()).unwrap();
    let step = candle_core::safetensors::load(
        dir().join("decoder/step.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let x = step["x"].clone();
    let y = step["y"].to_dtype(candle_core::DType::U32).unwrap();
    let ex = Executor::new(&g).unwrap();
    let logits = &ex.forward_train(std::slice::from_ref(&x), 0).unwrap()[0];
    let loss = ecc::train::cross_entropy(logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let by_name = ex.grads_by_name(&grads);
    let mut sgd = Sgd::new(g.trainable_params(), 0.0, 0.0);
    sgd.step(ex.params(), &by_name, 0.1).unwrap();
    let mut worst = 0f64;
    for (name, v) in ex.params() {
        let want = &step[&format!("after.{name}")];
        let before = g.params[name].as_f32();
        let e = rel_err(&values(v.as_tensor()), &values(want));
        let moved = rel_err(&before, &values(want));
        println!("{name}: moved {moved:.1e}, ecc vs PyTorch {e:.1e}");
        assert!(
            e < 1e-5 && e < moved / 10.0,
            "{name}: {e:e} (moved {moved:e})"
        );
        worst = worst.max(e);
    }
    println!("decoder: one SGD step vs PyTorch's, worst relative error {worst:.1e}");
}
