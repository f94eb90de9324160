//! Agreement with an independent runtime: ecc's outputs against onnxruntime's, and ecc's
//! exported round trip through the ONNX checker and onnxruntime. The Python side is
//! scripts/ort_check.py, run in the venv made by scripts/setup-onnxruntime.sh.

mod common;

use common::fixtures;
use ecc::exec::{tensor_constant, Executor};
use ecc::import::{load_file, tensor::write_pb, ImportOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("ECC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| ecc::cache_dir().join("venv/bin/python"));
    let ready = p.is_file();
    common::require(
        p,
        ready,
        "the onnxruntime venv (scripts/setup-onnxruntime.sh)",
    )
}

/// Import, run on seeded random inputs, save inputs/outputs, export; returns the job.
fn job(
    name: &str,
    model: &Path,
    opts: &ImportOptions,
    batch: usize,
    work: &Path,
    seed: u64,
) -> serde_json::Value {
    job_against(name, model, opts, batch, work, seed, None)
}

/// [`job`], with the expected outputs computed by ecc from `reference` (another model with
/// the same function) instead of from the model itself.
fn job_against(
    name: &str,
    model: &Path,
    opts: &ImportOptions,
    batch: usize,
    work: &Path,
    seed: u64,
    reference: Option<&ecc::ir::Graph>,
) -> serde_json::Value {
    let g = load_file(model, opts).unwrap_or_else(|e| panic!("{e}"));
    let ex = Executor::new(reference.unwrap_or(&g)).unwrap();
    let io = work.join(name).join("io");
    std::fs::create_dir_all(&io).unwrap();
    let xs = common::random_inputs(&g, batch, seed);
    for (k, t) in xs.iter().enumerate() {
        write_pb(
            &io.join(format!("input_{k}.pb")),
            &ex.input_names()[k],
            &tensor_constant(t).unwrap(),
        )
        .unwrap();
    }
    let ys = ex.forward(&xs).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (k, y) in ys.iter().enumerate() {
        write_pb(
            &io.join(format!("output_{k}.pb")),
            &ex.output_names()[k],
            &tensor_constant(y).unwrap(),
        )
        .unwrap();
    }
    let exported = work.join(name).join("exported.onnx");
    ecc::export::write_file(&g, &exported).unwrap();
    serde_json::json!({
        "name": name,
        "original": model,
        "exported": exported,
        "io": io,
        "inputs": xs.len(),
        "outputs": ys.len(),
    })
}

/// The EC graph of `g` (issue 17): onnxruntime runs it (and ecc's round trip of it, after the
/// full checker) to `g`'s outputs as ecc computes them.
fn ecg_job(
    name: &str,
    g: &ecc::ir::Graph,
    opts: &ImportOptions,
    batch: usize,
    work: &Path,
    seed: u64,
) -> serde_json::Value {
    let conv = ecc::ec::convert(g);
    let ecg = ecc::ec::graph::build(&conv.canon, &conv.basis).unwrap();
    let path = work.join(format!("{name}.ecg.onnx"));
    std::fs::create_dir_all(work).unwrap();
    ecc::export::write_file(&ecg, &path).unwrap();
    let mut j = job_against(
        &format!("{name}.ecg"),
        &path,
        opts,
        batch,
        work,
        seed,
        Some(g),
    );
    j["check_original"] = serde_json::json!(true);
    j
}

#[test]
fn outputs_and_round_trips_agree_with_onnxruntime() {
    let Some(py) = python() else { return };
    let work = std::env::temp_dir().join(format!("ecc-ort-{}", std::process::id()));
    let mut jobs = vec![];
    let no = ImportOptions::default();
    for m in common::committed_models() {
        let name = m.file_stem().unwrap().to_string_lossy().to_string();
        jobs.push(job(&name, &m, &no, 3, &work, 1));
        // The canonical model of `ecc convert` is an ordinary ONNX file too.
        let g = load_file(&m, &no).unwrap();
        let canon = ecc::ec::convert(&g).canon;
        let path = work.join(format!("{name}.ec.onnx"));
        std::fs::create_dir_all(&work).unwrap();
        ecc::export::write_file(&canon, &path).unwrap();
        jobs.push(job(&format!("{name}.ec"), &path, &no, 3, &work, 1));
        jobs.push(ecg_job(&name, &g, &no, 3, &work, 1));
    }
    // PyTorch's export of a residual CNN with BN folded (tied streams, no BN: a DAG block)
    // and its canonical form.
    let folded =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bn-resnet/model-eval.onnx");
    jobs.push(job("bn-folded", &folded, &no, 3, &work, 5));
    let canon = ecc::ec::convert(&load_file(&folded, &no).unwrap()).canon;
    let path = work.join("bn-folded.ec.onnx");
    ecc::export::write_file(&canon, &path).unwrap();
    jobs.push(job("bn-folded.ec", &path, &no, 3, &work, 5));
    jobs.push(ecg_job(
        "bn-folded",
        &load_file(&folded, &no).unwrap(),
        &no,
        3,
        &work,
        5,
    ));
    // Today's PyTorch exporter (dynamo, opset 20; scripts/make-torch-exports.py) and the
    // canonical forms.
    for name in ["mlp", "cnn-prelu", "bn-mean", "decoder"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/torch-export/{name}.onnx"));
        jobs.push(job(&format!("torch-{name}"), &p, &no, 3, &work, 5));
        let canon = ecc::ec::convert(&load_file(&p, &no).unwrap()).canon;
        let path = work.join(format!("torch-{name}.ec.onnx"));
        ecc::export::write_file(&canon, &path).unwrap();
        jobs.push(job(&format!("torch-{name}.ec"), &path, &no, 3, &work, 5));
        let g = load_file(&p, &no).unwrap();
        jobs.push(ecg_job(&format!("torch-{name}"), &g, &no, 3, &work, 5));
    }
    // torchvision's resnet18 (both exports), when scripts/make-torchvision-resnet18.py has
    // written them (45 MB each; not committed), at 224x224, and the canonical forms.
    let tv = ecc::cache_dir().join("fixtures/torchvision");
    for name in ["resnet18-bn", "resnet18-folded"] {
        let p = tv.join(format!("{name}.onnx"));
        if !p.is_file() {
            println!("skipped {name}: not made (scripts/make-torchvision-resnet18.py)");
            continue;
        }
        let mut j = job(&format!("tv-{name}"), &p, &no, 1, &work, 9);
        if name == "resnet18-bn" {
            // Its BN nodes are in training form (training_mode=1), which onnxruntime runs with
            // batch statistics; ecc evaluates with the running ones, as its export (the
            // inference form) writes them: compare against that.
            j["original"] = j["exported"].clone();
        }
        jobs.push(j);
        let canon = ecc::ec::convert(&load_file(&p, &no).unwrap()).canon;
        let path = work.join(format!("tv-{name}.ec.onnx"));
        ecc::export::write_file(&canon, &path).unwrap();
        jobs.push(job(&format!("tv-{name}.ec"), &path, &no, 1, &work, 9));
    }
    // Models trained by ecc, written back as ONNX: same predictions in onnxruntime.
    std::fs::create_dir_all(&work).unwrap();
    let digits = ecc::data::digits().unwrap();
    let mlp = load_file(
        &common::committed_models()
            .into_iter()
            .find(|p| p.ends_with("mlp-digits.onnx"))
            .unwrap(),
        &no,
    )
    .unwrap();
    for kind in [
        ecc::train::OptimizerKind::Sgd,
        ecc::train::OptimizerKind::EcSgd,
    ] {
        let cfg = ecc::train::TrainConfig {
            optimizer: kind,
            epochs: 2,
            ..Default::default()
        };
        let (trained, _) = ecc::train::train(&mlp, &digits, &cfg, |_| {}).unwrap();
        let path = work.join(format!("trained-{kind:?}.onnx"));
        ecc::export::write_file(&trained, &path).unwrap();
        jobs.push(job(&format!("trained-{kind:?}"), &path, &no, 16, &work, 7));
    }
    // Networks with BatchNormalization trained by ecc (BN in training mode) are exported as
    // inference models with the running statistics: onnxruntime predicts as `ecc eval` does.
    for (name, spec) in [
        ("trained-bn-cnn", "cnn:1x8x8-c6-b-p-c8-b-10"),
        ("trained-resnet", "resnet:1x8x8-n1-w4.6.8"),
        ("trained-plainnet", "plain:1x8x8-n1-w4.6.8"),
    ] {
        let g = ecc::zoo::build(&ecc::zoo::Spec::parse(spec).unwrap(), 0, true).unwrap();
        let cfg = ecc::train::TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let (trained, _) = ecc::train::train(&g, &digits, &cfg, |_| {}).unwrap();
        assert_ne!(trained.params, g.params, "{name}: trained");
        let path = work.join(format!("{name}.onnx"));
        ecc::export::write_file(&trained, &path).unwrap();
        jobs.push(job(name, &path, &no, 16, &work, 8));
        // Its canonical form (star blocks of the residual streams and BN units, spec §12)
        // keeps the inference function: onnxruntime predicts the same from it.
        let canon = ecc::ec::convert(&trained).canon;
        assert_ne!(canon.params, trained.params, "{name}: normalized");
        let path = work.join(format!("{name}.ec.onnx"));
        ecc::export::write_file(&canon, &path).unwrap();
        jobs.push(job(&format!("{name}.ec"), &path, &no, 16, &work, 8));
        jobs.push(ecg_job(name, &trained, &no, 16, &work, 8));
    }
    // Issue 17's round trip: PyTorch modules trained three steps in path space by ecc_torch,
    // folded and exported (scripts/make-torch-ec.py), against ecc's three EC-SGD steps from
    // the same start on the same batches. The BN module's file has BN in training form,
    // which onnxruntime runs with batch statistics: its inference form (ecc's export of it)
    // is run instead, as for resnet18-bn.
    for name in common::torch_ec::NAMES {
        let r = common::torch_ec::record(name);
        let (trained, _) = common::torch_ec::ec_sgd_three_steps(&r);
        let path = common::torch_ec::dir().join(name).join("trained.onnx");
        let mut j = job_against(
            &format!("torch-ec-{name}-trained"),
            &path,
            &no,
            8,
            &work,
            12,
            Some(&trained),
        );
        if name == "rescnn" {
            j["original"] = j["exported"].clone();
        }
        jobs.push(j);
    }
    if let Some(fx) = fixtures() {
        let mut pnet = ImportOptions::default();
        // pnet is fully convolutional; any size from 12x12 up works.
        pnet.input_shapes
            .insert("input_1".into(), vec![1, 31, 45, 3]);
        jobs.push(job(
            "mtcnn-pnet",
            &fx.join("mtcnn/pnet.onnx"),
            &pnet,
            2,
            &work,
            2,
        ));
        jobs.push(job(
            "mtcnn-rnet",
            &fx.join("mtcnn/rnet.onnx"),
            &no,
            4,
            &work,
            3,
        ));
        jobs.push(job(
            "mtcnn-onet",
            &fx.join("mtcnn/onet.onnx"),
            &no,
            4,
            &work,
            4,
        ));
        for (name, opts) in [("pnet", &pnet), ("rnet", &no), ("onet", &no)] {
            let g = load_file(&fx.join(format!("mtcnn/{name}.onnx")), opts).unwrap();
            jobs.push(ecg_job(&format!("mtcnn-{name}"), &g, opts, 2, &work, 4));
        }
        // The canonical form of squeezenet (fan-out and concatenation without BN: a DAG
        // block), an ordinary ONNX file that onnxruntime runs as ecc does.
        let sq = fx.join("onnx/light/light_squeezenet.onnx");
        let canon = ecc::ec::convert(&load_file(&sq, &no).unwrap()).canon;
        let path = work.join("squeezenet.ec.onnx");
        ecc::export::write_file(&canon, &path).unwrap();
        jobs.push(job("squeezenet.ec", &path, &no, 1, &work, 6));
        // The light zoo models with random weights (their files hold constant weights and
        // end in Softmax, so their own reference outputs are 1/1000 for any input): the
        // logits on seeded inputs, which exercise every conv, pool, BN and concatenation.
        for (k, name) in common::ZOO.iter().enumerate() {
            let path = fx.join(format!("onnx/light/light_{name}.onnx"));
            let g = load_file(&path, &no).unwrap();
            let shape = g.shapes[&g.inputs[0].name].with_batch(1);
            let g = ecc::train::logits_graph(&common::zoo_model(&fx, name, shape));
            let path = work.join(format!("zoo-{name}.onnx"));
            ecc::export::write_file(&g, &path).unwrap();
            jobs.push(job(
                &format!("zoo-{name}"),
                &path,
                &no,
                1,
                &work,
                20 + k as u64,
            ));
        }
        // The pytorch cases are opset 6, which onnxruntime no longer runs: their exports
        // go through the checker only (their numerics are checked in onnx_models.rs).
        for folder in ["pytorch-converted", "pytorch-operator"] {
            for case in std::fs::read_dir(fx.join("onnx").join(folder)).unwrap() {
                let case = case.unwrap().path();
                let name = case.file_name().unwrap().to_string_lossy().to_string();
                let Ok(g) = load_file(&case.join("model.onnx"), &no) else {
                    continue;
                };
                let exported = work.join(&name).join("exported.onnx");
                std::fs::create_dir_all(exported.parent().unwrap()).unwrap();
                ecc::export::write_file(&g, &exported).unwrap();
                jobs.push(serde_json::json!({"name": name, "original": case.join("model.onnx"), "exported": exported, "ort": false}));
            }
        }
    }
    let manifest = work.join("jobs.json");
    std::fs::write(&manifest, serde_json::to_string_pretty(&jobs).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ort_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&manifest)
        .output()
        .expect("run ort_check.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "onnxruntime disagrees (see above)");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok")).count(),
        jobs.len()
    );
    let _ = std::fs::remove_dir_all(&work);
}
