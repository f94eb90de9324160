//! Training on real data: each optimizer learns the digits, runs are deterministic, a
//! diverging run stops with a clear message, and an imported MLP trains on MNIST.

mod common;

use ecc::data::{digits, load};
use ecc::import::{load_file, ImportOptions};
use ecc::train::{evaluate, logits_graph, train, OptimizerKind, TrainConfig};

fn mlp() -> ecc::ir::Graph {
    load_file(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/mlp-digits.onnx"
        )),
        &ImportOptions::default(),
    )
    .unwrap()
}

fn cfg(kind: OptimizerKind, epochs: usize) -> TrainConfig {
    TrainConfig {
        optimizer: kind,
        epochs,
        ..Default::default()
    }
}

/// A small CNN with BatchNorm after each conv, for the 8x8 digits.
fn bn_cnn() -> ecc::ir::Graph {
    let spec = ecc::zoo::Spec::parse("cnn:1x8x8-c6-b-p-c8-b-10").unwrap();
    ecc::zoo::build(&spec, 0, true).unwrap()
}

/// Train with a stop request (Ctrl-C's path) after step `step` of epoch `epoch`; the error.
fn train_interrupted(
    g: &ecc::ir::Graph,
    split: &ecc::data::Split,
    c: &TrainConfig,
    epoch: usize,
    step: usize,
) -> ecc::Error {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let hooks = ecc::train::Hooks {
        on_epoch: Box::new(|_| {}),
        on_step: Box::new(|i| {
            if i.epoch == epoch && i.step == step {
                stop.store(true, Ordering::SeqCst);
            }
        }),
        stop: Some(&stop),
    };
    ecc::train::train_with(g, split, c, hooks).unwrap_err()
}

#[test]
fn each_optimizer_learns_the_digits() {
    let split = digits().unwrap();
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::EcSgd,
        OptimizerKind::PathSgd,
        OptimizerKind::BalancedSgd,
    ] {
        let (trained, hist) = train(&mlp(), &split, &cfg(kind, 6), |_| {}).unwrap();
        let (first, last) = (&hist[0], hist.last().unwrap());
        println!(
            "{kind:?}: train loss {:.3} -> {:.3}, test accuracy {:.3}",
            first.train_loss, last.train_loss, last.test_accuracy
        );
        assert!(
            last.train_loss < 0.5 * first.train_loss,
            "{kind:?}: the loss did not fall"
        );
        assert!(
            last.test_accuracy > 0.85,
            "{kind:?}: test accuracy {}",
            last.test_accuracy
        );
        // The returned model computes what the last evaluation saw.
        let g = logits_graph(&trained);
        let (loss, acc) =
            evaluate(&ecc::exec::Executor::new(&g).unwrap(), &g, &split.test, 100).unwrap();
        assert!(
            (acc - last.test_accuracy).abs() < 1e-9 && (loss - last.test_loss).abs() < 1e-4,
            "{kind:?}"
        );
    }
}

#[test]
fn same_seed_same_weights() {
    let split = digits().unwrap();
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::EcSgd,
        OptimizerKind::BalancedSgd,
    ] {
        let (a, _) = train(&mlp(), &split, &cfg(kind, 2), |_| {}).unwrap();
        let (b, _) = train(&mlp(), &split, &cfg(kind, 2), |_| {}).unwrap();
        assert_eq!(
            a.params, b.params,
            "{kind:?}: two runs with one seed differ"
        );
        let mut c = cfg(kind, 2);
        c.seed = 1;
        let (d, _) = train(&mlp(), &split, &c, |_| {}).unwrap();
        assert_ne!(a.params, d.params, "{kind:?}: the seed changed nothing");
    }
}

#[test]
fn a_diverging_run_stops_with_a_clear_message() {
    let split = digits().unwrap();
    let mut c = cfg(OptimizerKind::Sgd, 3);
    c.lr = 1e12;
    let e = train(&mlp(), &split, &c, |_| {}).unwrap_err();
    assert!(matches!(e.kind, ecc::ErrorKind::Diverged(_)), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("the loss became")
            && e.contains("learning rate 1e12 too large?")
            && e.contains("training stopped"),
        "{e}"
    );
}

#[test]
fn an_imported_mlp_trains_on_mnist_with_ec_sgd() {
    let Some(data) = common::data() else { return };
    let dir = data.join("mnist");
    let split = load(&format!("mnist:{}", dir.display())).unwrap();
    // Built with the onnx package's helpers (scripts/make-foreign-model.py), not by ecc:
    // Gemm(transB=1) as PyTorch exports Linear, and a trailing Softmax.
    let g = load_file(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/mlp-mnist-onnx-helper.onnx"
        )),
        &ImportOptions::default(),
    )
    .unwrap();
    let mut c = cfg(OptimizerKind::EcSgd, 1);
    c.batch = 64;
    c.lr = 0.1;
    c.momentum = 0.0;
    let (_, hist) = train(&g, &split, &c, |_| {}).unwrap();
    println!(
        "mnist, imported 784-32-10 (onnx helper), EC-SGD, 1 epoch: test accuracy {:.4}, {:.1}s",
        hist[0].test_accuracy, hist[0].seconds
    );
    assert!(hist[0].test_accuracy > 0.9);
}

#[test]
fn resuming_from_a_checkpoint_equals_an_uninterrupted_run() {
    let split = digits().unwrap();
    let dir = common::Scratch::new("ckpt");
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::EcSgd,
        OptimizerKind::BalancedSgd,
    ] {
        let (straight, _) = train(&mlp(), &split, &cfg(kind, 2), |_| {}).unwrap();
        let ckpt = dir.join(format!("{kind:?}.safetensors"));
        let _ = std::fs::remove_file(&ckpt);
        let mut c = cfg(kind, 1);
        c.checkpoint = Some(ckpt.clone());
        c.resume = true;
        let (_, h1) = train(&mlp(), &split, &c, |_| {}).unwrap();
        assert!(ckpt.is_file());
        c.epochs = 2;
        let (resumed, h2) = train(&mlp(), &split, &c, |_| {}).unwrap();
        assert_eq!(
            (h1.len(), h2.len(), h2[0].epoch),
            (1, 1, 2),
            "{kind:?}: the resumed run did epoch 2 only"
        );
        assert_eq!(
            straight.params, resumed.params,
            "{kind:?}: 1 + 1 epochs differ from 2"
        );
    }
}

#[test]
fn a_diverging_run_leaves_the_last_checkpoint_intact() {
    let split = digits().unwrap();
    let dir = common::Scratch::new("ckpt-nan");
    let ckpt = dir.join("c.safetensors");
    let mut c = cfg(OptimizerKind::Sgd, 1);
    c.checkpoint = Some(ckpt.clone());
    train(&mlp(), &split, &c, |_| {}).unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    c.resume = true;
    c.epochs = 3;
    c.lr = 1e12;
    assert!(train(&mlp(), &split, &c, |_| {}).is_err());
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the checkpoint changed"
    );
    assert!(!dir.join("c.safetensors.tmp").exists());
}

/// Ctrl-C's path: a stop request after step 7 of epoch 2 writes a checkpoint mid-epoch;
/// resuming from it ends exactly where an uninterrupted run ends, with the same metrics
/// (the resumed epoch's train loss and accuracy over all its steps, the guard count).
#[test]
fn an_interrupted_run_resumes_exactly() {
    let split = digits().unwrap();
    let dir = common::Scratch::new("ckpt-int");
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::EcSgd,
        OptimizerKind::BalancedSgd,
    ] {
        let (straight, hs) = train(&mlp(), &split, &cfg(kind, 3), |_| {}).unwrap();
        let ckpt = dir.join(format!("{kind:?}.safetensors"));
        let _ = std::fs::remove_file(&ckpt);
        let mut c = cfg(kind, 3);
        c.checkpoint = Some(ckpt.clone());
        c.resume = true;
        let e = train_interrupted(&mlp(), &split, &c, 2, 7);
        assert!(matches!(e.kind, ecc::ErrorKind::Interrupted(_)), "{e}");
        assert!(e.to_string().contains("step 7 of epoch 2"), "{e}");
        let (resumed, h) = train(&mlp(), &split, &c, |_| {}).unwrap();
        assert_eq!(h.iter().map(|m| m.epoch).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(
            straight.params, resumed.params,
            "{kind:?}: the interrupted run ends elsewhere"
        );
        for (a, b) in hs[1..].iter().zip(&h) {
            assert_eq!(a.train_loss, b.train_loss, "{kind:?}: epoch {}", a.epoch);
            assert_eq!(a.test_accuracy, b.test_accuracy);
            assert_eq!(a.guarded_steps, b.guarded_steps);
        }
    }
}

/// A checkpoint is checked against the run it resumes: another optimizer, batch size or
/// seed, or a model with other parameters, is one line naming both sides (exit 2 from the
/// CLI), never a silent resume.
#[test]
fn a_checkpoint_of_another_run_is_refused() {
    let split = digits().unwrap();
    let dir = common::Scratch::new("ckpt-other");
    let ckpt = dir.join("c.safetensors");
    let _ = std::fs::remove_file(&ckpt);
    let mut c = cfg(OptimizerKind::Sgd, 1);
    c.checkpoint = Some(ckpt.clone());
    train(&mlp(), &split, &c, |_| {}).unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    c.resume = true;
    c.epochs = 2;
    let mut other = c.clone();
    other.optimizer = OptimizerKind::EcSgd;
    let mut batch = c.clone();
    batch.batch = 17;
    let mut seed = c.clone();
    seed.seed = 9;
    let mut lr = c.clone();
    lr.lr = 0.01;
    let mut momentum = c.clone();
    momentum.momentum = 0.0;
    let mut augment = c.clone();
    augment.augment = true;
    for (what, cc, g) in [
        (
            "optimizer sgd there, --optimizer ec-sgd here",
            &other,
            mlp(),
        ),
        ("batch 32 there, --batch 17 here", &batch, mlp()),
        ("seed 0 there, --seed 9 here", &seed, mlp()),
        ("--lr 0.05 there, 0.01 here", &lr, mlp()),
        ("--momentum 0.9 there, 0 here", &momentum, mlp()),
        ("--augment false there, true here", &augment, mlp()),
    ] {
        let e = train(&g, &split, cc, |_| {}).unwrap_err();
        assert!(matches!(e.kind, ecc::ErrorKind::Usage(_)), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    // Another data set (same model, same options).
    let mut fewer = split.clone();
    let n = fewer.train.y.len() / 2;
    fewer.train.y.truncate(n);
    fewer
        .train
        .x
        .truncate(n * fewer.train.dims.iter().product::<usize>());
    let e = train(&mlp(), &fewer, &c, |_| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("--data digits (1438 train / 359 test) there"),
        "{e}"
    );
    // A model without biases against a checkpoint with them.
    let spec = ecc::zoo::Spec::parse("mlp:64-32-10").unwrap();
    let (with, without) = (
        ecc::zoo::build(&spec, 0, true).unwrap(),
        ecc::zoo::build(&spec, 0, false).unwrap(),
    );
    let ck2 = dir.join("b.safetensors");
    let _ = std::fs::remove_file(&ck2);
    let mut cb = cfg(OptimizerKind::Sgd, 1);
    cb.checkpoint = Some(ck2.clone());
    train(&with, &split, &cb, |_| {}).unwrap();
    cb.resume = true;
    cb.epochs = 2;
    let e = train(&without, &split, &cb, |_| {}).unwrap_err();
    assert!(e.to_string().contains("that the model has not"), "{e}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the checkpoint changed"
    );
}

/// The README's first command: `ecc train` with no arguments trains the embedded model on the
/// embedded digits with SGD, EC-SGD and the control, and prints the comparison table.
#[test]
fn the_default_command_compares_the_optimizers() {
    let (code, text, err) = common::ecc(&["train"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("optimizer"))
        .skip(1)
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["sgd", "ec-sgd", "sgd-ec-init"], "{text}");
    for row in rows {
        let acc: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(acc > 0.9, "{row}");
    }
}

#[test]
fn bench_train_times_the_chosen_optimizers_and_their_phases() {
    let (code, text, err) = common::ecc(&[
        "bench",
        "train",
        "--runs",
        "3",
        "--case",
        "mlp-784-64x4-10",
        "--optimizers",
        "sgd,ec-sgd",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let names: Vec<&str> = cases
        .iter()
        .map(|c| c["optimizer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sgd", "ec-sgd"]);
    for c in cases {
        let ms = |k: &str| c[k].as_f64().unwrap();
        assert!(ms("ms_per_step") > 0.0);
        for phase in ["forward_ms", "backward_ms", "update_ms"] {
            assert!(
                ms(phase) > 0.0 && ms(phase) <= 1.5 * ms("ms_per_step"),
                "{phase}"
            );
        }
    }
    let ratios = v["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 1);
    let over = ratios[0]["over_sgd"].as_f64().unwrap();
    let want =
        cases[1]["ms_per_step"].as_f64().unwrap() / cases[0]["ms_per_step"].as_f64().unwrap();
    assert!((over - want).abs() < 1e-12);
    let (code, _, err) = common::ecc(&["bench", "train", "--optimizers", "adam"]);
    assert_eq!(code, 2);
    assert!(err.contains("--optimizers 'adam'"), "{err}");
    // A model file of the user's, at the batch given: a BN network, timed in training mode.
    let model = std::env::temp_dir().join(format!("ecc-bench-{}.onnx", std::process::id()));
    let (code, _, err) = common::ecc(&[
        "new",
        "resnet:1x12x12-n1-w4.6.8",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, text, err) = common::ecc(&[
        "bench",
        "train",
        "--model",
        model.to_str().unwrap(),
        "--batch",
        "6",
        "--runs",
        "2",
        "--optimizers",
        "sgd",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["cases"][0];
    assert_eq!(
        c["name"].as_str().unwrap(),
        model.file_stem().unwrap().to_str().unwrap()
    );
    assert_eq!(c["batch"].as_u64().unwrap(), 6);
    std::fs::remove_file(&model).unwrap();
    let (code, _, err) = common::ecc(&["bench", "train", "--model", "/nonexistent.onnx"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent.onnx"), "{err}");
}

/// A network with BatchNorm trained with --augment: the running statistics are checkpointed
/// with the weights and the augmentation is drawn from the seed and the step, so a run
/// interrupted mid-epoch and resumed ends exactly where an uninterrupted one ends; and the
/// running statistics moved.
#[test]
fn a_batch_norm_run_with_augmentation_resumes_exactly() {
    let split = digits().unwrap();
    let g = bn_cnn();
    let dir = common::Scratch::new("ckpt-bn");
    let mut c = cfg(OptimizerKind::Sgd, 2);
    c.augment = true;
    c.lr = 0.01;
    let (straight, _) = train(&g, &split, &c, |_| {}).unwrap();
    assert_ne!(
        straight.params["conv1_bn.running_mean"], g.params["conv1_bn.running_mean"],
        "the running statistics moved"
    );
    let mut plain = c.clone();
    plain.augment = false;
    let (unaugmented, _) = train(&g, &split, &plain, |_| {}).unwrap();
    assert_ne!(
        unaugmented.params, straight.params,
        "--augment changes the batches"
    );
    let ckpt = dir.join("bn.safetensors");
    c.checkpoint = Some(ckpt.clone());
    c.resume = true;
    train_interrupted(&g, &split, &c, 2, 5);
    let (resumed, _) = train(&g, &split, &c, |_| {}).unwrap();
    assert_eq!(straight.params, resumed.params);
}

/// With BatchNorm after every conv (training mode), every rescaling is a star (spec §11,
/// §12): EC-SGD moves all of them in path space, and trains as well as SGD, with no
/// non-finite step.
#[test]
fn ec_sgd_trains_a_batch_norm_network_in_path_space() {
    let split = digits().unwrap();
    let g = bn_cnn();
    let tg = ecc::train::logits_graph(&g);
    let r = ecc::ec::convert(&tg).report("bn_cnn", &tg);
    assert_eq!(r.unit_coverage, 1.0, "{}", r.summary());
    assert!(r.coverage > 0.9, "{}", r.summary());
    // The zoo leaves out the bias of a conv right before a BN (it would be redundant).
    assert_eq!(r.redundant_biases, 0);
    assert_eq!(r.radial, 6 + 8);
    let (_, hs) = train(&g, &split, &cfg(OptimizerKind::Sgd, 3), |_| {}).unwrap();
    let (ec, he) = train(&g, &split, &cfg(OptimizerKind::EcSgd, 3), |_| {}).unwrap();
    let (a_sgd, a_ec) = (hs[2].test_accuracy, he[2].test_accuracy);
    println!(
        "digits, 3 epochs: SGD {a_sgd:.4}, EC-SGD {a_ec:.4}; EC-SGD guarded steps {:?}",
        he.iter().map(|m| m.guarded_steps).collect::<Vec<_>>()
    );
    assert!(ec
        .params
        .values()
        .all(|p| p.as_f32().iter().all(|x| x.is_finite())));
    assert!(
        a_ec >= 0.85 && a_ec >= a_sgd - 0.05,
        "SGD {a_sgd}, EC-SGD {a_ec}"
    );
}

/// Options that cannot work are refused before any work (exit 2, one line); a finished run
/// resumed again says so, exits 0 and writes nothing; a resumed run appends its epochs to
/// the metrics file (issue 14).
#[test]
fn bad_training_options_and_finished_resumes_fail_loudly_or_do_nothing() {
    for (args, says) in [
        (&["--epochs", "0"][..], "--epochs must be at least 1"),
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (&["--lr", "nan"][..], "--lr must be a positive number"),
        (&["--momentum", "1.5"][..], "--momentum must be in [0, 1)"),
        (
            &["--weight-decay=-1"][..],
            "--weight-decay must be a number >= 0",
        ),
    ] {
        let mut a = vec!["train", "--optimizer", "sgd"];
        a.extend_from_slice(args);
        let (code, _, err) = common::ecc(&a);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // Output folders are checked before training, not after it.
    for flag in ["-o", "--checkpoint", "--metrics"] {
        let (code, out, err) = common::ecc(&[
            "train",
            "--optimizer",
            "sgd",
            flag,
            "/nonexistent-ecc-dir/x",
        ]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains("does not exist"), "{flag}: {err}");
        assert!(!out.contains("epoch"), "{flag}: trained first: {out}");
    }
    // Files that are replaced (model, checkpoint) must not be devices: a rename would put a
    // regular file in place of /dev/null (as root, of any device). Metrics, appended in
    // place, may go to one.
    for flag in ["-o", "--checkpoint"] {
        let (code, out, err) = common::ecc(&["train", "--optimizer", "sgd", flag, "/dev/null"]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains("special file"), "{flag}: {err}");
        assert!(!out.contains("epoch"), "{flag}: trained first: {out}");
    }
    let (code, _, err) = common::ecc(&[
        "train",
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--metrics",
        "/dev/null",
    ]);
    assert_eq!(code, 0, "{err}");
    // A metrics file that cannot be written stops the run (exit 2), not silently.
    if std::path::Path::new("/dev/full").exists() {
        let (code, _, err) =
            common::ecc(&["train", "--optimizer", "sgd", "--metrics", "/dev/full"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("/dev/full: cannot write file"), "{err}");
    }
    let dir = common::Scratch::new("resume");
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let run = |epochs: &str, resume: bool| {
        let (ck, m, o) = (path("ck.safetensors"), path("m.jsonl"), path("out.onnx"));
        let mut a = vec![
            "train",
            "--optimizer",
            "sgd",
            "--epochs",
            epochs,
            "--checkpoint",
            &ck,
            "--metrics",
            &m,
            "-o",
            &o,
        ];
        if resume {
            a.push("--resume");
        }
        common::ecc(&a)
    };
    let (code, _, err) = run("1", false);
    assert_eq!(code, 0, "{err}");
    // The same run again: finished, nothing to do, nothing written.
    std::fs::remove_file(dir.join("out.onnx")).unwrap();
    let (code, out, err) = run("1", true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(!dir.join("out.onnx").exists());
    let epochs = |p: &str| common::metric_epochs(std::path::Path::new(p));
    // The epoch-0 row (the model as given) and epoch 1.
    assert_eq!(epochs(&path("m.jsonl")), [0, 1]);
    // One more epoch: its metrics line follows the first.
    let (code, _, err) = run("2", true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs(&path("m.jsonl")), [0, 1, 2]);
    // A kill after epoch 3's metrics line and before its checkpoint: the resumed run trains
    // epoch 3 again and its line replaces the orphan (before issue 14 the checkpoint came
    // first, and a kill there lost the line for good).
    let m = path("m.jsonl");
    let mut text = std::fs::read_to_string(&m).unwrap();
    text.push_str("{\"epoch\":3,\"orphan\":true}\n");
    std::fs::write(&m, text).unwrap();
    let (code, _, err) = run("3", true);
    assert_eq!(code, 0, "{err}");
    assert!(!std::fs::read_to_string(&m).unwrap().contains("orphan"));
    assert_eq!(epochs(&m), [0, 1, 2, 3]);
}

/// Empty data is an error naming the split, not a run reporting loss 0 (issue 14).
#[test]
fn empty_data_is_refused() {
    let mut split = digits().unwrap();
    split.test.x.clear();
    split.test.y.clear();
    let e = train(&mlp(), &split, &cfg(OptimizerKind::Sgd, 1), |_| {}).unwrap_err();
    assert!(e.to_string().contains("the test split is empty"), "{e}");
}

/// Path-SGD's step against the path-norm formula of Neyshabur et al. (2015), computed here in
/// f64 without autograd: for the weight w_ij from unit j to unit i, gamma = in(j) * out(i),
/// where in(j) sums the products of squared weights (and a squared bias at a path's start)
/// over the paths into j and out(i) over the paths from i to the outputs; a bias b_i has
/// gamma = out(i). One step without momentum is w - lr * g / gamma.
#[test]
fn path_sgd_step_matches_the_path_norm_formula() {
    let spec = ecc::zoo::Spec::parse("mlp:6-5-4-3").unwrap();
    let g = ecc::zoo::build(&spec, 3, true).unwrap();
    let layers: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, ecc::ir::Op::Gemm { .. }))
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(layers.len(), 3);
    let f64s = |k: &str| -> Vec<f64> { g.params[k].as_f32().iter().map(|&x| x as f64).collect() };
    let (ws, bs): (Vec<Vec<f64>>, Vec<Vec<f64>>) = layers
        .iter()
        .map(|l| (f64s(&format!("{l}.weight")), f64s(&format!("{l}.bias"))))
        .unzip();
    let widths = [6, 5, 4, 3];
    // in-flows: inputs 1; unit i of layer k: sum_j w_ij^2 in(j) + b_i^2.
    let mut inflow = vec![vec![1.0; 6]];
    for k in 0..3 {
        let (o, n) = (widths[k + 1], widths[k]);
        let v: Vec<f64> = (0..o)
            .map(|i| {
                (0..n)
                    .map(|j| ws[k][i * n + j].powi(2) * inflow[k][j])
                    .sum::<f64>()
                    + bs[k][i].powi(2)
            })
            .collect();
        inflow.push(v);
    }
    // out-flows: outputs 1; unit j of layer k: sum_i w_ij^2 out(i).
    let mut outflow = vec![vec![]; 4];
    outflow[3] = vec![1.0; 3];
    for k in (0..3).rev() {
        let (o, n) = (widths[k + 1], widths[k]);
        outflow[k] = (0..n)
            .map(|j| {
                (0..o)
                    .map(|i| ws[k][i * n + j].powi(2) * outflow[k + 1][i])
                    .sum()
            })
            .collect();
    }
    // One batch, its gradients from a separate executor, then one Path-SGD step.
    let split = digits().unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let x: Vec<f32> = (0..8 * 6)
        .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0))
        .collect();
    let x = candle_core::Tensor::from_vec(x, (8, 6), &candle_core::Device::Cpu).unwrap();
    let y = candle_core::Tensor::from_vec(
        split.train.y[..8]
            .iter()
            .map(|c| c % 3)
            .collect::<Vec<u32>>(),
        8,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let c = TrainConfig {
        optimizer: OptimizerKind::PathSgd,
        momentum: 0.0,
        weight_decay: 0.0,
        ..Default::default()
    };
    let tg = logits_graph(&g);
    let ex0 = ecc::exec::Executor::new(&tg).unwrap();
    let logits = ex0.forward_train(std::slice::from_ref(&x), 0).unwrap()[0].clone();
    let grads = ex0.grads_by_name(
        &ecc::train::cross_entropy(&logits, &y)
            .unwrap()
            .backward()
            .unwrap(),
    );
    let (start, mut opt) = ecc::train::optimizer_for(&tg, &c).unwrap();
    let ex = ecc::exec::Executor::new(&start).unwrap();
    let lr = 1e-3;
    ecc::train::step(&ex, opt.as_mut(), &x, &y, 0, lr).unwrap();
    let mut worst = 0f64;
    for (k, l) in layers.iter().enumerate() {
        let (o, n) = (widths[k + 1], widths[k]);
        for (name, w0, gamma) in [
            (
                format!("{l}.weight"),
                &ws[k],
                (0..o * n)
                    .map(|e| inflow[k][e % n] * outflow[k + 1][e / n])
                    .collect::<Vec<_>>(),
            ),
            (format!("{l}.bias"), &bs[k], outflow[k + 1].clone()),
        ] {
            let gr = grads[&name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let now = common::values(ex.params()[&name].as_tensor());
            // Norm-wise, relative to the step itself (not to the weights), so that the
            // formula is what is checked; f32 rounding of the weights is ~3e-8 absolute.
            let (mut diff, mut step) = (0f64, 0f64);
            for i in 0..w0.len() {
                let want = w0[i] - lr * gr[i] as f64 / gamma[i];
                diff += (now[i] as f64 - want).powi(2);
                step += (want - w0[i]).powi(2);
            }
            worst = worst.max((diff / step).sqrt());
        }
    }
    println!("Path-SGD step vs the path-norm formula: worst error {worst:.1e} of the step");
    assert!(worst <= 1e-3, "{worst:e}");

    // The scale `ecc train` reports for Path-SGD: percentiles of the weights' gamma (biases
    // left out), the same numbers as the formula's.
    let mut want: Vec<f64> = (0..3)
        .flat_map(|k| {
            let (o, n) = (widths[k + 1], widths[k]);
            let (i, u) = (&inflow[k], &outflow[k + 1]);
            (0..o * n).map(move |e| i[e % n] * u[e / n])
        })
        .collect();
    want.sort_by(f64::total_cmp);
    let at = |q: f64| want[((want.len() - 1) as f64 * q).round() as usize];
    let got = ecc::train::path_sgd_gamma(&g).unwrap().unwrap();
    for (q, v) in [0.1, 0.5, 0.9].into_iter().zip(got.weights) {
        assert!(
            (v / at(q) - 1.0).abs() < 1e-4,
            "gamma at {q}: {v} vs {}",
            at(q)
        );
    }
    // The biases': out(i) of their units, the classifier's exactly 1.
    let bias: Vec<f64> = outflow[1..].concat();
    let lo = bias.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = bias.iter().copied().fold(0.0, f64::max);
    let [blo, bhi] = got.biases.unwrap();
    assert!((blo / lo - 1.0).abs() < 1e-4 && (bhi / hi - 1.0).abs() < 1e-4);
    assert!(lo <= 1.0 && outflow[3].iter().all(|&v| v == 1.0));
}

/// Path-SGD's note: its gamma is a product of squared weights along paths, so scaling every
/// weight of a bias-free L-layer MLP by c scales it by c^(2(L-1)); the note appears when
/// the median leaves [0.1, 10] and says what the learning rate then acts like.
#[test]
fn path_sgd_note_reports_the_scale_of_gamma() {
    let spec = ecc::zoo::Spec::parse("mlp:6-5-4-3").unwrap();
    let g = ecc::zoo::build(&spec, 3, false).unwrap();
    let scale = ecc::train::path_sgd_gamma(&g).unwrap().unwrap();
    assert_eq!(scale.biases, None);
    let [_, med, _] = scale.weights;
    let scale_by = |g: &ecc::ir::Graph, c: f32| {
        let mut s = g.clone();
        for t in s.params.values_mut() {
            if let ecc::ir::TensorData::F32(v) = &mut t.data {
                v.iter_mut().for_each(|x| *x *= c);
            }
        }
        s
    };
    let scaled = |c: f32| scale_by(&g, c);
    // PyTorch's default initialization (weights of variance 1/(3 fan_in)): already below 1
    // with 3 layers. Scaled so that the median is 1, and by 10 from there.
    let unit = scaled(med.powf(-0.25) as f32);
    let big = scaled(10.0 * med.powf(-0.25) as f32);
    let [_, med1, _] = ecc::train::path_sgd_gamma(&unit).unwrap().unwrap().weights;
    let [_, med10, _] = ecc::train::path_sgd_gamma(&big).unwrap().unwrap().weights;
    assert!((med1 - 1.0).abs() < 1e-4, "{med} -> {med1}");
    assert!((med10 / 1e4 - 1.0).abs() < 1e-4, "{med} -> {med10}");
    let note = |g: &ecc::ir::Graph| ecc::train::path_sgd_note(g, 0.01).unwrap();
    assert_eq!(note(&unit), None);
    for (m, g) in [(med, &g), (med10, &big)] {
        let n = note(g).expect("a note for gamma far from 1");
        let says = format!("lr 0.01 steps like SGD at lr {:.1e}", 0.01 / m);
        assert!(n.contains(&says), "{n}");
    }
    // With biases, scaled by 10 as well: the classifier's bias keeps γ = 1 (its paths have
    // no weight before it), 1e4 below the weights' median, and the note says so.
    let biased = scale_by(
        &ecc::zoo::build(&spec, 3, true).unwrap(),
        10.0 * med.powf(-0.25) as f32,
    );
    let s = ecc::train::path_sgd_gamma(&biased).unwrap().unwrap();
    assert!((s.biases.unwrap()[0] - 1.0).abs() < 1e-6, "{s:?}");
    let n = note(&biased).unwrap();
    assert!(n.contains("the biases' γ is 1.0e0"), "{n}");
    assert!(
        n.contains("moves the bias of least γ like SGD at lr 1.0e-2"),
        "{n}"
    );
    // A model Path-SGD does not apply to (BatchNorm): an error, which `ecc train` leaves to
    // the training run to report.
    assert!(ecc::train::path_sgd_gamma(&bn_cnn()).is_err());
}

/// `--keep-function`: EC-SGD starts from the canonical form, which computes what the model
/// computes: at step 0 the test loss and accuracy are the imported model's.
#[test]
fn keep_function_starts_from_the_same_function() {
    let split = digits().unwrap();
    let tg = logits_graph(&mlp());
    let c = TrainConfig {
        optimizer: OptimizerKind::EcSgd,
        skeleton_init: false,
        ..Default::default()
    };
    let (start, _) = ecc::train::optimizer_for(&tg, &c).unwrap();
    assert_ne!(
        start.params, tg.params,
        "the canonical form moved no weight"
    );
    let at = |g: &ecc::ir::Graph| {
        evaluate(&ecc::exec::Executor::new(g).unwrap(), g, &split.test, 512).unwrap()
    };
    let ((l0, a0), (l1, a1)) = (at(&tg), at(&start));
    println!("imported: loss {l0} acc {a0}; canonical start: loss {l1} acc {a1}");
    assert_eq!(a0, a1);
    assert!((l0 - l1).abs() <= 1e-5 * l0, "{l0} vs {l1}");
}

/// The learning-rate schedules against their formulas.
#[test]
fn schedules_follow_their_formulas() {
    use ecc::train::Schedule;
    let close = |a: f64, b: f64| assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    let s = Schedule::parse("step:3:0.5").unwrap();
    for (e, want) in [
        (0, 0.2),
        (2, 0.2),
        (3, 0.1),
        (5, 0.1),
        (6, 0.05),
        (9, 0.025),
    ] {
        close(s.lr(0.2, e, 10), want);
    }
    let s = Schedule::parse("exp:0.5").unwrap();
    close(s.lr(0.2, 4, 10), 0.2 * (-2.0f64).exp());
    let s = Schedule::parse("cosine").unwrap();
    close(s.lr(0.2, 0, 10), 0.2);
    close(s.lr(0.2, 5, 10), 0.1);
    close(s.lr(0.2, 10, 10), 0.0);
    close(Schedule::parse("constant").unwrap().lr(0.2, 7, 10), 0.2);
    for bad in [
        "step:0:0.5",
        "step:2:nan",
        "step:2:0",
        "exp:nan",
        "exp:inf",
        "linear",
    ] {
        assert!(Schedule::parse(bad).is_err(), "{bad}");
    }
}

/// The NaN-on-the-last-batch case (issue 14): a step that breaks the weights on the last
/// batch of an epoch has no later step whose loss would show it; the test loss after the
/// epoch does, and training stops before that epoch's checkpoint, so the checkpoint keeps the
/// last good epoch. Here every epoch is one batch, and the schedule multiplies the learning
/// rate by 1e30 after the first.
#[test]
fn weights_broken_on_an_epochs_last_batch_never_reach_the_checkpoint() {
    let split = digits().unwrap();
    let dir = common::Scratch::new("ckpt-last");
    let ckpt = dir.join("c.safetensors");
    let _ = std::fs::remove_file(&ckpt);
    let mut c = cfg(OptimizerKind::Sgd, 2);
    c.batch = 4096;
    c.schedule = ecc::train::Schedule::parse("step:1:1e30").unwrap();
    c.checkpoint = Some(ckpt.clone());
    let mut epochs = vec![];
    let e = train(&mlp(), &split, &c, |m| epochs.push(m.epoch)).unwrap_err();
    assert!(matches!(e.kind, ecc::ErrorKind::Diverged(_)), "{e}");
    assert!(e.to_string().contains("the test loss became"), "{e}");
    assert_eq!(epochs, [1], "the broken epoch reported metrics");
    assert_eq!(ecc::train::checkpoint_epoch(&ckpt).unwrap(), 1);
    // The checkpoint holds finite weights: resuming evaluates to a finite loss.
    let t = candle_core::safetensors::load(&ckpt, &candle_core::Device::Cpu).unwrap();
    for (k, v) in t.iter().filter(|(k, _)| k.starts_with("param/")) {
        let x = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x.iter().all(|v| v.is_finite()), "{k}");
    }
}

/// A label the model has no class for is an error naming the data set, the split and the
/// sample (issue 14: it failed inside the loss, naming nothing).
#[test]
fn labels_past_the_models_classes_are_refused() {
    let mut split = digits().unwrap();
    split.test.y[5] = 10;
    let e = train(&mlp(), &split, &cfg(OptimizerKind::Sgd, 1), |_| {}).unwrap_err();
    assert!(matches!(e.kind, ecc::ErrorKind::Data(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "invalid data: data 'digits': sample 5 of the test split has label 10, but the model has 10 classes"
    );
}

/// Issue 15, item 1: before the first step `ecc train` evaluates the model as given and, when
/// the optimizer starts from another function (EC-SGD's skeleton reset), that start too;
/// both are printed and recorded as epoch-0 rows, and a start worse than the given model is
/// said in words. A resumed run does not repeat them.
#[test]
fn epoch_zero_shows_the_given_model_and_the_start() {
    let dir = common::Scratch::new("epoch0");
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let trained = path("trained.onnx");
    let (code, _, err) = common::ecc(&[
        "train",
        "--optimizer",
        "sgd",
        "--epochs",
        "5",
        "-o",
        &trained,
    ]);
    assert_eq!(code, 0, "{err}");
    let rows = |m: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(m)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let m = path("m.jsonl");
    let run = |extra: &[&str]| {
        let mut a = vec!["train", &trained, "--optimizer", "ec-sgd"];
        if !extra.contains(&"--epochs") {
            a.extend(["--epochs", "1"]);
        }
        a.extend_from_slice(extra);
        common::ecc(&a)
    };
    let (code, out, err) = run(&["--metrics", &m]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("epoch   0") && out.contains("the model as given"),
        "{out}"
    );
    assert!(out.contains("after the skeleton reset"), "{out}");
    let r = rows(&m);
    let starts: Vec<&str> = r
        .iter()
        .map(|v| v["start"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(starts, ["given", "skeleton-reset", "-"]);
    let epochs: Vec<u64> = r.iter().map(|v| v["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [0, 0, 1]);
    let (given, reset) = (
        r[0]["test_accuracy"].as_f64().unwrap(),
        r[1]["test_accuracy"].as_f64().unwrap(),
    );
    assert!(given > 0.8, "the model was trained: {given}");
    // The reset changes a trained model's function; here it makes it worse, and says so.
    assert_ne!(given, reset);
    if reset < given - 0.005 {
        assert!(out.contains("note: ec-sgd's start"), "{out}");
    }
    // The given model's row is what `ecc eval` reports.
    let (_, eval, _) = common::ecc(&["eval", &trained]);
    assert!(
        eval.contains(&format!("accuracy {given:.4}")),
        "{eval} vs {given}"
    );
    // From the model's own function: one epoch-0 row (at a learning rate EC-SGD survives
    // from a trained model's canonical form: the V's are small, spec §13).
    let (code, _, err) = run(&["--metrics", &m, "--keep-function", "--lr", "1e-6"]);
    assert_eq!(code, 0, "{err}");
    let starts: Vec<String> = rows(&m).iter().map(|v| v["start"].to_string()).collect();
    assert_eq!(starts, ["\"given\"", "null"]);
    // A resumed run keeps its epoch-0 rows and adds none.
    let ck = path("ck.safetensors");
    let (code, _, err) = run(&["--metrics", &m, "--checkpoint", &ck]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&[
        "--metrics",
        &m,
        "--checkpoint",
        &ck,
        "--resume",
        "--epochs",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("epoch   0"), "{out}");
    let epochs: Vec<u64> = rows(&m)
        .iter()
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [0, 0, 1, 2]);
    // Data that does not fit the model is refused before any row.
    let mnist_mlp = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mlp-mnist.onnx");
    let (code, out, err) = common::ecc(&["train", mnist_mlp, "--epochs", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("784 features per sample"), "{err}");
    assert!(!out.contains("epoch   0"), "{out}");
}

/// Issue 15: `ecc train TRAINED.onnx` with no options but the data: the model as given is
/// trained, so the fine-tuning defaults apply (said in a note), the epoch-0 line shows the
/// given accuracy, and after one epoch neither optimizer ends below it.
#[test]
fn the_fine_tuning_defaults_do_not_damage_a_trained_model() {
    let Some(data) = common::data() else { return };
    let mnist = format!("mnist:{}", data.join("mnist").display());
    let dir = common::Scratch::new("finetune");
    let m = dir.join("m.jsonl");
    let (code, out, err) = common::ecc(&[
        "train",
        "models/mlp-mnist-sgd.onnx",
        "--data",
        &mnist,
        "--epochs",
        "1",
        "--metrics",
        m.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("note: the model as given is trained"), "{out}");
    assert!(out.contains("lr 0.01, momentum 0"), "{out}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for opt in ["sgd", "balanced-sgd"] {
        let of: Vec<&serde_json::Value> = rows.iter().filter(|r| r["optimizer"] == opt).collect();
        assert_eq!(of.len(), 2, "{opt}: the given row and epoch 1: {rows:?}");
        assert_eq!(
            of[0]["start"], "given",
            "{opt}: no reset for a trained model"
        );
        let (start, end) = (
            of[0]["test_accuracy"].as_f64().unwrap(),
            of[1]["test_accuracy"].as_f64().unwrap(),
        );
        assert!(
            out.contains(&format!("test acc {start:.4}  the model as given")),
            "{out}"
        );
        assert!(end >= start, "{opt}: {start} -> {end}");
    }
}

/// Side by side, one optimizer's divergence does not stop the others: they finish, the
/// table marks the diverged one, and the command still fails with one line (exit 2).
#[test]
fn a_diverged_optimizer_does_not_stop_the_others() {
    // EC-SGD from the canonical form of the fresh digits model at lr 0.05 diverges (its V
    // are ~1e-4: README); SGD trains.
    let (code, out, err) = common::ecc(&[
        "train",
        "--optimizer",
        "both",
        "--keep-function",
        "--epochs",
        "1",
    ]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("training diverged: ec-sgd;"), "{err}");
    let table = out.split("optimizer ").last().unwrap();
    assert!(table.contains("\nsgd "), "{out}");
    assert!(table.contains("\nec-sgd        diverged"), "{out}");
}
