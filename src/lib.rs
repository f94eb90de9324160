//! ecc, the equivalence-class compiler. See ARCHITECTURE.md for the pipeline:
//! import -> IR -> (analysis -> EC plan) -> executor -> export.

pub mod analysis;
pub mod bench;
pub mod error;
pub mod exec;
pub mod export;
pub mod import;
pub mod inspect;
pub mod ir;
pub mod zoo;

pub use error::{Error, ErrorKind, Result};
