//! Shared test helpers: where the fetched fixtures are, and output comparison.
#![allow(dead_code)]

use candle_core::Tensor;
use std::path::PathBuf;

/// The fixture cache written by `scripts/fetch-fixtures.sh`, if it is there. Under CI
/// (CI=true) a missing cache fails the test; elsewhere the test says so and passes.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("ECC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("ecc").join("fixtures")
        });
    if dir.join(".complete").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!(
            "fixtures missing in {} under CI: run scripts/fetch-fixtures.sh",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: fixtures not fetched (run scripts/fetch-fixtures.sh); looked in {}",
        dir.display()
    );
    None
}

/// The repository's committed models.
pub fn committed_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    v
}

/// Norm-wise relative error max|a - b| / max(max|b|, 1e-6).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-6);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    if a.iter().chain(b).any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    diff / scale
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}
