//! Robustness: every committed and fetched model, truncated at several offsets and with
//! random byte flips, gives a clean error or a working model, never a panic.

mod common;

use ecc::exec::Executor;
use ecc::import::{load_bytes, ImportOptions};
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Import the bytes and, for small models, run them once; Err(()) on a panic.
fn try_model(bytes: &[u8], opts: &ImportOptions, run: bool) -> Result<bool, ()> {
    catch_unwind(AssertUnwindSafe(|| {
        let Ok(g) = load_bytes(bytes, opts) else {
            return false;
        };
        if run {
            if let Ok(ex) = Executor::new(&g) {
                let xs: Vec<_> = (0..ex.input_names().len())
                    .map(|k| {
                        candle_core::Tensor::ones(
                            ex.input_shape(k).with_batch(1),
                            candle_core::DType::F32,
                            ex.device(),
                        )
                        .unwrap()
                    })
                    .collect();
                let _ = ex.forward(&xs);
            }
        }
        true
    }))
    .map_err(|_| ())
}

fn mutations(bytes: &[u8], seed: u64, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let len = bytes.len();
    let mut out = vec![];
    for k in 0..n {
        let cut = if k == 0 { 1 } else { (len * k / n).max(1) };
        out.push((format!("truncated at {cut}"), bytes[..cut].to_vec()));
    }
    for _ in 0..n {
        let mut b = bytes.to_vec();
        let flips = rng.gen_range(1..=4);
        let mut what = vec![];
        for _ in 0..flips {
            let i = rng.gen_range(0..len);
            let bit = 1u8 << rng.gen_range(0..8);
            b[i] ^= bit;
            what.push(format!("{i}^{bit}"));
        }
        out.push((format!("flipped {}", what.join(",")), b));
    }
    out
}

#[test]
fn mutated_models_never_panic() {
    let mut models: Vec<(PathBuf, ImportOptions, bool, usize)> = common::committed_models()
        .into_iter()
        .map(|p| (p, ImportOptions::default(), true, 24))
        .collect();
    if let Some(fx) = common::fixtures() {
        let mut pnet = ImportOptions::default();
        pnet.input_shapes
            .insert("input_1".into(), vec![1, 12, 12, 3]);
        models.push((fx.join("mtcnn/pnet.onnx"), pnet, true, 24));
        models.push((
            fx.join("mtcnn/rnet.onnx"),
            ImportOptions::default(),
            true,
            24,
        ));
        models.push((
            fx.join("mtcnn/onet.onnx"),
            ImportOptions::default(),
            true,
            24,
        ));
        // The zoo models allocate up to 575 MB of weights: import only, fewer mutations.
        for e in std::fs::read_dir(fx.join("onnx/light")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "onnx") {
                models.push((p, ImportOptions::default(), false, 6));
            }
        }
        for folder in ["pytorch-converted", "pytorch-operator"] {
            for e in std::fs::read_dir(fx.join("onnx").join(folder)).unwrap() {
                models.push((
                    e.unwrap().path().join("model.onnx"),
                    ImportOptions::default(),
                    true,
                    6,
                ));
            }
        }
    }
    // Panics are caught and counted; keep their messages out of the way.
    std::panic::set_hook(Box::new(|_| {}));
    let (mut tried, mut imported, mut panics) = (0, 0, vec![]);
    for (i, (path, opts, run, n)) in models.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        for (what, b) in mutations(&bytes, i as u64, *n) {
            tried += 1;
            match try_model(&b, opts, *run) {
                Ok(true) => imported += 1,
                Ok(false) => {}
                Err(()) => panics.push(format!("{}: {what}", path.display())),
            }
        }
    }
    let _ = std::panic::take_hook();
    println!(
        "{} models, {tried} mutations: {imported} still imported, {} clean errors, {} panics",
        models.len(),
        tried - imported - panics.len(),
        panics.len()
    );
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
    // The README's totals, pinned (with the fixtures: committed models, mtcnn, the light
    // zoo and the pytorch cases).
    if common::fixtures().is_some() {
        assert_eq!(
            (models.len(), tried),
            (FUZZ_MODELS, FUZZ_MUTATIONS),
            "models, mutations (README)"
        );
    }
}

/// The README's fuzz totals (with the fixtures fetched).
const FUZZ_MODELS: usize = 136;
const FUZZ_MUTATIONS: usize = 1992;
