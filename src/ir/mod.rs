//! The IR: one graph of typed ops over named values, with its parameters and static
//! constants. The importer produces it, every later stage reads it, the exporter writes it.
//!
//! Invariants (checked by the importer, relied upon by everything after it):
//! - `nodes` are in topological order and each value name is produced exactly once;
//! - every value (graph input, node output, parameter, constant) has an entry in `shapes`;
//! - `params` are the f32 tensors read by ops as data (weights, biases, BN statistics);
//!   `consts` are static operands (Reshape targets, Clip bounds, Squeeze axes) whose values
//!   the ops also carry in their attributes.

mod layer;
mod op;
mod shape;

pub use layer::{layer_axes, Layer};
pub use op::{
    BinaryKind, ConvAttrs, ConvTransposeAttrs, Interp, NearestMode, Op, PadMode, PoolAttrs,
    ResizeAttrs,
};
pub use shape::{
    conv_out_len, conv_transpose_out_len, norm_axis, reshape_dims, Shape, MAX_ELEMENTS,
};

use std::collections::{BTreeMap, HashMap};

/// Metadata key (a JSON list of names): parameters read as data but never trained, e.g. the
/// EC graph's designated constants (`ec::graph`).
pub const META_FROZEN: &str = "ecc.frozen";
/// Metadata key (a JSON list of names): trained parameters without weight decay, e.g. the
/// EC graph's V coordinates (EC-SGD decays p only, spec §5).
pub const META_NO_DECAY: &str = "ecc.no_decay";

/// Element data of a constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor: parameter or static operand.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    pub dims: Vec<usize>,
    pub data: TensorData,
}

impl Constant {
    pub fn f32(dims: Vec<usize>, data: Vec<f32>) -> Self {
        Constant {
            dims,
            data: TensorData::F32(data),
        }
    }
    pub fn i64(dims: Vec<usize>, data: Vec<i64>) -> Self {
        Constant {
            dims,
            data: TensorData::I64(data),
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as i64 (f32 values are truncated), for shape-like operands.
    pub fn as_i64(&self) -> Vec<i64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I64(v) => v.clone(),
        }
    }
    /// The values as f32 (i64 values are converted).
    pub fn as_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// Element `i` as f32, without copying the tensor.
    pub fn get_f32(&self, i: usize) -> f32 {
        match &self.data {
            TensorData::F32(v) => v[i],
            TensorData::I64(v) => v[i] as f32,
        }
    }
    pub fn is_f32(&self) -> bool {
        matches!(self.data, TensorData::F32(_))
    }
}

/// A declared dimension of a graph input or output, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimDecl {
    Value(i64),
    Param(String),
    Unknown,
}

/// A graph input or output: its name, its declared dims, and (for float tensors) the
/// static shape ecc works with.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub declared: Vec<DimDecl>,
    /// ONNX element type (1 = float).
    pub elem_type: i32,
}

/// Everything about the model file that is not the graph itself; kept for export.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelMeta {
    pub ir_version: i64,
    /// (domain, version); the default domain is "".
    pub opsets: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc_string: String,
    pub graph_name: String,
    pub graph_doc: String,
    pub metadata: Vec<(String, String)>,
    /// What import changed that the user should be told (e.g. float64 values computed in
    /// float32); not written on export. The CLI prints each as a `note:` line.
    pub notes: Vec<String>,
    /// The nodes after the outputs that ecc keeps but does not run, if any.
    pub tail: Option<Tail>,
}

/// Post-processing after the outputs that ecc does not run (issue 16 item 3: an ArgMax, the
/// `ai.onnx.ml` label branch of a scikit-learn model): kept as read and written back by
/// export after ecc's graph, so a trained model keeps its interface.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tail {
    /// The nodes, as serialized NodeProtos, in graph order.
    pub nodes: Vec<Vec<u8>>,
    /// Initializers only these nodes read, as serialized TensorProtos.
    pub initializers: Vec<Vec<u8>>,
    /// The model's outputs in their order: computed by ecc (its name), or by the tail (its
    /// serialized ValueInfoProto).
    pub outputs: Vec<TailOutput>,
    /// Values the tail reads that the model does not output: ecc's graph outputs them, and
    /// export drops them from the outputs again.
    pub hidden: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TailOutput {
    Computed(String),
    Kept(Vec<u8>),
}

impl ModelMeta {
    /// The opset of the default ("" or "ai.onnx") domain.
    pub fn opset(&self) -> i64 {
        self.opsets
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|(_, v)| *v)
            .unwrap_or(1)
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The name in the file (may be empty).
    pub name: String,
    pub op: Op,
    /// All ONNX inputs in order: data inputs first, then static operands (see
    /// [`Op::data_inputs`]). An absent optional input is "".
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

impl Node {
    /// The data inputs, which the executor reads; static operands follow them.
    pub fn data_inputs(&self) -> &[String] {
        let n = self.op.data_inputs(self.inputs.len());
        &self.inputs[..n.min(self.inputs.len())]
    }
}

/// A whole model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub meta: ModelMeta,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    pub params: BTreeMap<String, Constant>,
    pub consts: BTreeMap<String, Constant>,
    pub shapes: HashMap<String, Shape>,
}

impl Graph {
    /// Number of trainable-candidate scalars (all f32 parameters).
    pub fn param_count(&self) -> usize {
        self.params.values().map(Constant::len).sum()
    }

    /// A display name for node `i`: its own name, or `#i` when it has none.
    pub fn node_label(&self, i: usize) -> String {
        let n = &self.nodes[i].name;
        if n.is_empty() {
            format!("#{i}")
        } else {
            n.clone()
        }
    }

    /// Error context for node `i`.
    pub fn node_ref(&self, i: usize) -> crate::error::NodeRef {
        crate::error::NodeRef {
            name: self.node_label(i),
            op_type: self.nodes[i].op.onnx_name().to_string(),
            opset: self.meta.opset(),
        }
    }

    /// The running mean and variance of every BatchNormalization: parameters that are not
    /// trained.
    pub fn bn_statistics(&self) -> std::collections::HashSet<&String> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BatchNorm { .. }))
            .flat_map(|n| n.inputs[3..5].iter())
            .collect()
    }

    /// The parameters an optimizer trains: all but the running statistics and those the
    /// model's metadata marks frozen ([`META_FROZEN`]).
    pub fn trainable_params(&self) -> std::collections::HashSet<String> {
        let stats = self.bn_statistics();
        let frozen = self.metadata_names(META_FROZEN);
        self.params
            .keys()
            .filter(|k| !stats.contains(k) && !frozen.contains(*k))
            .cloned()
            .collect()
    }

    /// The names in a JSON-list metadata entry (empty when absent or not a list).
    pub fn metadata_names(&self, key: &str) -> std::collections::HashSet<String> {
        self.meta
            .metadata
            .iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, v)| serde_json::from_str::<Vec<String>>(v).ok())
            .flatten()
            .collect()
    }

    /// Histogram of ONNX op types, sorted by name.
    pub fn op_histogram(&self) -> BTreeMap<&'static str, usize> {
        let mut h = BTreeMap::new();
        for n in &self.nodes {
            *h.entry(n.op.onnx_name()).or_insert(0) += 1;
        }
        h
    }
}
