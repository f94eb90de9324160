//! Errors as values. A model problem names the file, the node (name, op type, opset) and
//! what is wrong, in one line; the CLI maps it to exit code 2.

use std::fmt;
use std::path::PathBuf;

/// Which node an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// The node's name, or `#index` when the model leaves it unnamed.
    pub name: String,
    pub op_type: String,
    pub opset: i64,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node '{}' ({}, opset {})",
            self.name, self.op_type, self.opset
        )
    }
}

/// What went wrong, without the location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read file: {0}")]
    Io(String),
    /// A file ecc writes (model, checkpoint, metrics, plan, document) could not be written.
    #[error("cannot write file: {0}")]
    Write(String),
    /// A data file (IDX, CIFAR-10 batch, the embedded digits) is malformed.
    #[error("invalid data: {0}")]
    Data(String),
    /// A training checkpoint is malformed (one of another run is a usage error).
    #[error("invalid checkpoint: {0}")]
    Checkpoint(String),
    #[error("not a valid ONNX model: {0}")]
    Parse(String),
    #[error("unsupported op '{0}' (`ecc ops` lists the supported ones)")]
    UnsupportedOp(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("execution failed: {0}")]
    Exec(String),
    #[error("{0}")]
    Usage(String),
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// Training produced a non-finite loss (the message says where).
    #[error("training diverged: {0}")]
    Diverged(String),
}

/// A located error: file and node are filled in as the error travels outwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub file: Option<PathBuf>,
    pub node: Option<NodeRef>,
    pub kind: ErrorKind,
}

impl Error {
    pub fn new(kind: ErrorKind) -> Self {
        Error {
            file: None,
            node: None,
            kind,
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid(msg.into()))
    }
    pub fn shape(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape(msg.into()))
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported(msg.into()))
    }
    pub fn exec(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exec(msg.into()))
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage(msg.into()))
    }
    pub fn data(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data(msg.into()))
    }
    pub fn checkpoint(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Checkpoint(msg.into()))
    }
    /// Attach the node, unless a more precise one is already attached.
    pub fn at_node(mut self, node: NodeRef) -> Self {
        if self.node.is_none() {
            self.node = Some(node);
        }
        self
    }
    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        if self.file.is_none() {
            self.file = Some(file.into());
        }
        self
    }
    /// True when the error is about an op or feature ecc does not implement (as opposed to
    /// a broken model).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::UnsupportedOp(..) | ErrorKind::Unsupported(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(node) = &self.node {
            write!(f, "{node}: ")?;
        }
        // One line, always: multi-line messages from dependencies are folded.
        let msg = self.kind.to_string().replace('\n', " ");
        write!(f, "{msg}")
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::exec(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
