//! ecc, the equivalence-class compiler. See ARCHITECTURE.md for the pipeline:
//! import -> IR -> (analysis -> EC plan) -> executor -> export.

pub mod analysis;
pub mod bench;
pub mod data;
pub mod ec;
pub mod error;
pub mod exec;
pub mod experiment;
pub mod export;
pub mod files;
pub mod import;
pub mod inspect;
pub mod ir;
pub mod plot;
pub mod train;
pub mod zoo;

pub use error::{Error, ErrorKind, Result};

/// The source revision this binary was built from (`build.rs`): a git commit, with
/// `+changes` when the tracked sources differed from it, or `unknown`. Recorded in every
/// metrics line beside the machine, and in `ecc --version`.
pub const BUILD: &str = env!("ECC_BUILD");

/// ecc's cache folder, outside the source tree: `$XDG_CACHE_HOME/ecc` or `~/.cache/ecc`.
/// The fixture script puts test models under `fixtures/` and the onnxruntime venv under
/// `venv/` there.
pub fn cache_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("ecc")
}

/// The fixture cache of `scripts/fetch-fixtures.sh` (`$ECC_FIXTURES` overrides).
pub fn fixture_dir() -> std::path::PathBuf {
    std::env::var_os("ECC_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("fixtures"))
}

/// The data cache of `scripts/fetch-data.sh` (`$ECC_DATA` overrides).
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os("ECC_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("data"))
}
