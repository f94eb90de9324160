//! Import: ONNX `ModelProto` -> IR [`Graph`].
//!
//! One pass over the nodes in file order: each node's op is built from its attributes by the
//! op table in [`ops`], its output shapes are inferred, and nodes whose inputs are all
//! constants (Constant, ConstantOfShape, shape arithmetic feeding a Reshape) are folded into
//! constants. Then every constant read as data becomes a parameter, every constant read as
//! a static operand a const.

mod attrs;
mod fold;
mod ops;
pub mod versions;
pub use ops::op_names;
pub mod tensor;

use crate::error::{Error, ErrorKind, NodeRef, Result};
use crate::ir::{Constant, DimDecl, Graph, ModelMeta, Node, Op, Shape, ValueInfo};
use onnx_protobuf::{ModelProto, NodeProto, ValueInfoProto};
use protobuf::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

pub use ops::Built;

/// Choices the model file leaves open.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Concrete dims for graph inputs, by name, overriding what the file declares. Needed for
    /// inputs with symbolic non-batch dims (e.g. a fully convolutional detector).
    pub input_shapes: HashMap<String, Vec<usize>>,
}

/// Read, parse and import a model file. Every error names the file.
pub fn load_file(path: &Path, opts: &ImportOptions) -> Result<Graph> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(path))?;
    load_bytes(&bytes, opts).map_err(|e| e.in_file(path))
}

/// Parse and import a serialized model.
pub fn load_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<Graph> {
    if bytes.is_empty() {
        return Err(Error::new(ErrorKind::Parse("the file is empty".into())));
    }
    let model = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| Error::new(ErrorKind::Parse(e.to_string())))?;
    import_model(&model, opts)
}

/// The values known so far in the pass.
struct Scope {
    shapes: HashMap<String, Shape>,
    consts: HashMap<String, Constant>,
    /// Outputs ecc does not compute (Dropout masks, MaxPool indices), with the reason.
    unavailable: HashMap<String, String>,
    /// The file's float initializers: parameters when read as data, so a Gather over one
    /// stays a node (the EC graph's V's) instead of folding into a copy.
    float_inits: HashSet<String>,
}

fn is_float(t: i32) -> bool {
    use tensor::dtype::*;
    matches!(t, FLOAT | DOUBLE | FLOAT16 | BFLOAT16)
}

fn decl_dims(v: &ValueInfoProto) -> (i32, Vec<DimDecl>) {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
    let t = v.type_.tensor_type();
    let dims = t
        .shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(x)) => DimDecl::Value(*x),
            Some(Value::DimParam(p)) => DimDecl::Param(p.clone()),
            _ => DimDecl::Unknown,
        })
        .collect();
    (t.elem_type, dims)
}

/// The static shape of a real graph input: overrides first, then declared values; a
/// symbolic leading dim is the batch (nominal size 1).
fn input_shape(info: &ValueInfo, opts: &ImportOptions) -> Result<Shape> {
    let rank = info.declared.len();
    let dims = if let Some(d) = opts.input_shapes.get(&info.name) {
        d.clone()
    } else {
        let mut dims = Vec::with_capacity(rank);
        for (i, d) in info.declared.iter().enumerate() {
            dims.push(match d {
                DimDecl::Value(v) if *v > 0 => *v as usize,
                DimDecl::Value(v) if *v < 0 || (*v == 0 && i > 0) => {
                    return Err(Error::shape(format!(
                        "input '{}' declares dimension {v} at axis {i}",
                        info.name
                    )))
                }
                _ if i == 0 => 1,
                DimDecl::Param(p) => {
                    return Err(Error::usage(format!(
                        "input '{}' has symbolic dimension '{p}' at axis {i}: give its size with --input-shape {}=DxDx...",
                        info.name, info.name
                    )))
                }
                _ => {
                    return Err(Error::usage(format!(
                        "input '{}' has no size at axis {i}: give it with --input-shape {}=DxDx...",
                        info.name, info.name
                    )))
                }
            });
        }
        dims
    };
    let s = if dims.len() >= 2 {
        Shape::batched(dims, 0)
    } else {
        Shape::fixed(dims)
    };
    s.check(&format!("input '{}'", info.name))?;
    Ok(s)
}

fn meta_of(m: &ModelProto) -> ModelMeta {
    let g = m.graph.as_ref().cloned().unwrap_or_default();
    ModelMeta {
        ir_version: m.ir_version,
        opsets: m
            .opset_import
            .iter()
            .map(|o| (o.domain.clone(), o.version))
            .collect(),
        notes: vec![],
        tail: None,
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc_string.clone(),
        graph_name: g.name.clone(),
        graph_doc: g.doc_string.clone(),
        metadata: m
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect(),
    }
}

/// Ops that only post-process outputs, which ecc keeps without running when they come after
/// the part it runs (with every node downstream of them): these, and any op of the
/// `ai.onnx.ml` domain.
const POST_PROCESSING: &[&str] = &["ArgMax", "ArgMin", "TopK"];

/// Split off the tail of post-processing nodes (see [`crate::ir::Tail`]): the first node
/// ecc does not read that is a post-processing op, and every node downstream of one. Any
/// other op ecc does not read stays in the graph (and import names it). Returns the model
/// without the tail, its outputs the values ecc computes: the model's own that the tail
/// does not compute, and the values the tail reads.
fn split_tail(model: &ModelProto) -> Result<Option<(ModelProto, crate::ir::Tail)>> {
    use crate::ir::{Tail, TailOutput};
    let Some(g) = model.graph.as_ref() else {
        return Ok(None);
    };
    let default = |d: &str| d.is_empty() || d == "ai.onnx";
    let post = |n: &NodeProto| {
        n.domain == "ai.onnx.ml"
            || (default(&n.domain)
                && !ops::reads(&n.op_type)
                && POST_PROCESSING.contains(&n.op_type.as_str()))
    };
    let mut tail_values: HashSet<&str> = HashSet::new();
    let mut in_tail = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        if post(n) || n.input.iter().any(|x| tail_values.contains(x.as_str())) {
            in_tail[i] = true;
            tail_values.extend(n.output.iter().map(String::as_str));
        }
    }
    if !in_tail.contains(&true) {
        return Ok(None);
    }
    let read_by = |tail: bool| -> HashSet<&str> {
        g.node
            .iter()
            .zip(&in_tail)
            .filter(|(_, &t)| t == tail)
            .flat_map(|(n, _)| n.input.iter().map(String::as_str))
            .collect()
    };
    let (tail_reads, ecc_reads) = (read_by(true), read_by(false));
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    // Values the tail reads from ecc's part (not constants) that the model does not output.
    let hidden: Vec<String> = g
        .node
        .iter()
        .zip(&in_tail)
        .filter(|(_, &t)| !t)
        .flat_map(|(n, _)| n.output.iter())
        .filter(|v| tail_reads.contains(v.as_str()) && !outputs.contains(v.as_str()))
        .cloned()
        .collect();
    let mut tail = Tail {
        hidden: hidden.clone(),
        ..Default::default()
    };
    let mut trimmed = model.clone();
    let tg = trimmed.graph.as_mut().expect("a graph");
    let mut kept_nodes = vec![];
    for (n, &t) in g.node.iter().zip(&in_tail) {
        if t {
            tail.nodes.push(
                n.write_to_bytes()
                    .map_err(|e| Error::invalid(e.to_string()))?,
            );
        } else {
            kept_nodes.push(n.clone());
        }
    }
    tg.node = kept_nodes;
    tg.initializer.clear();
    for t in &g.initializer {
        if tail_reads.contains(t.name.as_str()) && !ecc_reads.contains(t.name.as_str()) {
            tail.initializers.push(
                t.write_to_bytes()
                    .map_err(|e| Error::invalid(e.to_string()))?,
            );
        } else {
            tg.initializer.push(t.clone());
        }
    }
    // IR 3 lists initializers among the inputs: the tail's go with it.
    tg.input.retain(|v| {
        !(inits.contains(v.name.as_str())
            && tail_reads.contains(v.name.as_str())
            && !ecc_reads.contains(v.name.as_str()))
    });
    tg.output.clear();
    for o in &g.output {
        if tail_values.contains(o.name.as_str()) {
            tail.outputs.push(TailOutput::Kept(
                o.write_to_bytes()
                    .map_err(|e| Error::invalid(e.to_string()))?,
            ));
        } else {
            tail.outputs.push(TailOutput::Computed(o.name.clone()));
            tg.output.push(o.clone());
        }
    }
    for h in &hidden {
        let mut v = ValueInfoProto::new();
        v.name = h.clone();
        let mut t = onnx_protobuf::type_proto::Tensor::new();
        t.elem_type = tensor::dtype::FLOAT;
        let mut ty = onnx_protobuf::TypeProto::new();
        ty.value = Some(onnx_protobuf::type_proto::Value::TensorType(t));
        v.type_ = protobuf::MessageField::some(ty);
        tg.output.push(v);
    }
    Ok(Some((trimmed, tail)))
}

/// Import a parsed model: the part ecc runs, with a tail of post-processing nodes after its
/// outputs kept for export ([`split_tail`]).
pub fn import_model(model: &ModelProto, opts: &ImportOptions) -> Result<Graph> {
    let Some((trimmed, tail)) = split_tail(model)? else {
        return import_graph(model, opts);
    };
    let mut g = import_graph(&trimmed, opts)?;
    let ops: BTreeMap<String, usize> = tail
        .nodes
        .iter()
        .filter_map(|b| NodeProto::parse_from_bytes(b).ok())
        .fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n.op_type).or_default() += 1;
            m
        });
    let list: Vec<String> = ops
        .iter()
        .map(|(k, n)| {
            if *n > 1 {
                format!("{n} {k}")
            } else {
                k.clone()
            }
        })
        .collect();
    g.meta.notes.push(format!(
        "{} node{} after the outputs ({}) kept for export, not run",
        tail.nodes.len(),
        if tail.nodes.len() == 1 { "" } else { "s" },
        list.join(", ")
    ));
    g.meta.tail = Some(tail);
    Ok(g)
}

/// Import a parsed model that ecc runs whole.
fn import_graph(model: &ModelProto, opts: &ImportOptions) -> Result<Graph> {
    let meta = meta_of(model);
    let opset = meta.opset();
    if let Some(why) = versions::check(meta.ir_version, opset) {
        return Err(Error::unsupported(why));
    }
    let Some(g) = model.graph.as_ref() else {
        return Err(Error::invalid("the model has no graph"));
    };
    if g.node.is_empty() {
        return Err(Error::invalid("the graph has no nodes"));
    }

    let mut scope = Scope {
        shapes: HashMap::new(),
        consts: HashMap::new(),
        unavailable: HashMap::new(),
        float_inits: HashSet::new(),
    };
    // Float values stored wider or narrower than f32, which ecc computes and writes in f32:
    // said in one note, never silently (issue 16).
    let mut narrowed: Vec<String> = vec![];
    let mut other_floats = BTreeMap::<&str, usize>::new();
    for t in &g.initializer {
        if t.name.is_empty() {
            return Err(Error::invalid("an initializer has no name"));
        }
        if is_float(t.data_type) && t.data_type != tensor::dtype::FLOAT {
            *other_floats
                .entry(tensor::dtype::name(t.data_type))
                .or_default() += 1;
        }
        let c = tensor::decode(t)?;
        if c.is_f32() {
            scope.float_inits.insert(t.name.clone());
        }
        scope
            .shapes
            .insert(t.name.clone(), Shape::fixed(c.dims.clone()));
        scope.consts.insert(t.name.clone(), c);
    }

    // IR 3 lists initializers among the inputs, and some files list values that nodes
    // produce: neither is an input the user feeds.
    let produced: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let mut inputs = vec![];
    for v in &g.input {
        if scope.consts.contains_key(&v.name) || produced.contains(v.name.as_str()) {
            continue;
        }
        let (elem_type, declared) = decl_dims(v);
        if !is_float(elem_type) {
            return Err(Error::unsupported(format!(
                "input '{}' has element type {} (ecc computes in float)",
                v.name,
                tensor::dtype::name(elem_type)
            )));
        }
        // ecc computes in f32: wider and narrower floats are converted, and the model is
        // written back in f32 (the note says so).
        if elem_type != tensor::dtype::FLOAT {
            narrowed.push(format!(
                "input '{}' ({})",
                v.name,
                tensor::dtype::name(elem_type)
            ));
        }
        let info = ValueInfo {
            name: v.name.clone(),
            declared,
            elem_type: tensor::dtype::FLOAT,
        };
        let s = input_shape(&info, opts)?;
        scope.shapes.insert(v.name.clone(), s);
        inputs.push(info);
    }
    // A leading dim is the batch only when all inputs agree on it (a MatMul of two
    // matrices has none).
    let leads: HashSet<usize> = inputs
        .iter()
        .filter_map(|i| {
            scope.shapes[&i.name]
                .batch
                .map(|_| scope.shapes[&i.name].dims[0])
        })
        .collect();
    if leads.len() > 1 {
        for i in &inputs {
            scope.shapes.get_mut(&i.name).expect("input shape").batch = None;
        }
    }
    if let Some(name) = opts
        .input_shapes
        .keys()
        .find(|k| !inputs.iter().any(|i| &i.name == *k))
    {
        return Err(Error::usage(format!(
            "--input-shape names '{name}', which is not an input of this model"
        )));
    }

    let mut nodes = vec![];
    for (i, np) in g.node.iter().enumerate() {
        let nref = NodeRef {
            name: if np.name.is_empty() {
                format!("#{i}")
            } else {
                np.name.clone()
            },
            op_type: np.op_type.clone(),
            opset,
        };
        if np.op_type == "Cast" {
            let to = attrs::Attrs::new(np).int("to", 0) as i32;
            if is_float(to) && to != tensor::dtype::FLOAT {
                narrowed.push(format!("a Cast to {}", tensor::dtype::name(to)));
            }
        }
        let parts = desugar(np, opset, &mut scope).map_err(|e| e.at_node(nref.clone()))?;
        for np in parts.as_deref().unwrap_or(std::slice::from_ref(np)) {
            if let Some(node) =
                import_node(np, opset, &mut scope).map_err(|e| e.at_node(nref.clone()))?
            {
                nodes.push(node);
            }
        }
    }

    let mut outputs = vec![];
    for v in &g.output {
        let (elem_type, declared) = decl_dims(v);
        if !is_float(elem_type) {
            return Err(Error::unsupported(format!(
                "output '{}' has element type {}",
                v.name,
                tensor::dtype::name(elem_type)
            )));
        }
        if scope.consts.contains_key(&v.name) {
            return Err(Error::unsupported(format!(
                "output '{}' is a constant",
                v.name
            )));
        }
        if !scope.shapes.contains_key(&v.name) {
            return Err(match scope.unavailable.get(&v.name) {
                Some(why) => Error::unsupported(format!("output '{}' is {why}", v.name)),
                None => Error::invalid(format!("output '{}' is not produced by any node", v.name)),
            });
        }
        if elem_type != tensor::dtype::FLOAT {
            narrowed.push(format!(
                "output '{}' ({})",
                v.name,
                tensor::dtype::name(elem_type)
            ));
        }
        outputs.push(ValueInfo {
            name: v.name.clone(),
            declared,
            elem_type: tensor::dtype::FLOAT,
        });
    }
    if outputs.is_empty() {
        return Err(Error::invalid("the graph has no outputs"));
    }

    for (ty, n) in other_floats {
        narrowed.push(format!(
            "{n} {ty} initializer{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    let mut meta = meta;
    if !narrowed.is_empty() {
        meta.notes.push(format!(
            "computed in float32 and written back as float32 (ecc computes in f32): {}",
            narrowed.join(", ")
        ));
    }
    // Constants read as data are parameters; those read as static operands are consts.
    let mut graph = Graph {
        meta,
        inputs,
        outputs,
        nodes,
        ..Default::default()
    };
    for (i, n) in graph.nodes.iter().enumerate() {
        let nd = n.data_inputs().len();
        for (k, name) in n.inputs.iter().enumerate() {
            let Some(c) = scope.consts.get(name) else {
                continue;
            };
            if k < nd {
                if !c.is_f32() {
                    return Err(Error::unsupported(format!(
                        "integer tensor '{name}' used as data"
                    ))
                    .at_node(graph.node_ref(i)));
                }
                graph.params.insert(name.clone(), c.clone());
            } else {
                graph.consts.insert(name.clone(), c.clone());
            }
        }
    }
    // Keep shapes of what survives: values computed by nodes, inputs, params, consts.
    let live: HashSet<&String> = graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().chain(n.outputs.iter()))
        .chain(graph.inputs.iter().map(|v| &v.name))
        .collect();
    graph.shapes = scope
        .shapes
        .into_iter()
        .filter(|(k, _)| live.contains(k))
        .collect();
    Ok(graph)
}

/// Build one node: an op with inferred output shapes, or constants when it folds.
fn import_node(np: &NodeProto, opset: i64, scope: &mut Scope) -> Result<Option<Node>> {
    if !(np.domain.is_empty() || np.domain == "ai.onnx") {
        return Err(Error::new(ErrorKind::UnsupportedOp(format!(
            "{}::{}",
            np.domain, np.op_type
        ))));
    }
    for name in &np.input {
        if !name.is_empty() && !scope.shapes.contains_key(name) {
            return Err(match scope.unavailable.get(name) {
                Some(why) => Error::unsupported(format!("input '{name}' is {why}")),
                None => Error::invalid(format!(
                    "input '{name}' is not produced by any earlier node, initializer or graph input"
                )),
            });
        }
    }
    if np.output.is_empty() || np.output[0].is_empty() {
        return Err(Error::invalid("the node has no output"));
    }
    for o in &np.output {
        if !o.is_empty() && scope.shapes.contains_key(o) {
            return Err(Error::invalid(format!("value '{o}' is produced twice")));
        }
    }
    let built = {
        let ctx = ops::NodeCtx::new(np, opset, &scope.shapes, &scope.consts)
            .with_params(&scope.float_inits);
        ops::build(&ctx)?
    };
    let op = match built {
        Built::Consts(values) => {
            for (o, c) in np.output.iter().zip(values) {
                scope.shapes.insert(o.clone(), Shape::fixed(c.dims.clone()));
                scope.consts.insert(o.clone(), c);
            }
            return Ok(None);
        }
        Built::Op(op) => op,
    };
    // The IR lists data inputs first: ScatterND's updates before its indices.
    let mut inputs = np.input.clone();
    if matches!(op, Op::ScatterNd { .. }) && inputs.len() == 3 {
        inputs.swap(1, 2);
    }
    let n_data = op.data_inputs(inputs.len());
    let data = &inputs[..n_data];
    if data.iter().any(String::is_empty) {
        return Err(Error::invalid("a required input is empty"));
    }
    let in_shapes: Vec<&Shape> = data.iter().map(|n| &scope.shapes[n]).collect();
    let out_shapes = op.infer(&in_shapes)?;
    for (o, s) in np.output.iter().zip(&out_shapes) {
        s.check(&format!("output '{o}'"))?;
    }
    // Layout ops over constants fold away (shape arithmetic, parameter reshapes).
    if data.iter().all(|n| scope.consts.contains_key(n)) {
        let args: Vec<&Constant> = data.iter().map(|n| &scope.consts[n]).collect();
        if let Some(c) = fold::eval_layout(&op, &args, &out_shapes[0])? {
            scope
                .shapes
                .insert(np.output[0].clone(), Shape::fixed(c.dims.clone()));
            scope.consts.insert(np.output[0].clone(), c);
            return Ok(None);
        }
    }
    for (k, o) in np.output.iter().enumerate().skip(out_shapes.len()) {
        if !o.is_empty() {
            scope.unavailable.insert(
                o.clone(),
                format!(
                    "output {k} of a {} node, which ecc does not compute",
                    np.op_type
                ),
            );
        }
    }
    let computed = out_shapes.len();
    for (o, s) in np.output.iter().zip(out_shapes) {
        scope.shapes.insert(o.clone(), s);
    }
    let mut outputs = np.output.clone();
    // The training forms of BatchNormalization (running statistics as outputs) and Dropout
    // (a training_mode input, a mask output) become the plain op: the executor's mode says
    // whether it trains, and the exported node is the inference form.
    if matches!(op, Op::BatchNorm { .. } | Op::Dropout { .. }) {
        outputs.truncate(computed);
        if matches!(op, Op::Dropout { .. }) {
            inputs.truncate(2);
        }
    }
    Ok(Some(Node {
        name: np.name.clone(),
        op,
        inputs,
        outputs,
    }))
}

/// Nodes that are written as other supported ones: ReduceMean over every spatial axis of an
/// N x C x ... tensor (what `torch.onnx.export` writes for `AdaptiveAvgPool2d(1)` and
/// `mean((2, 3))`) is GlobalAveragePool, followed with keepdims=0 by Flatten(axis=1), so
/// the analysis's rules and the pooling kernel serve it. Other reductions are refused.
fn desugar(np: &NodeProto, opset: i64, scope: &mut Scope) -> Result<Option<Vec<NodeProto>>> {
    if !(np.domain.is_empty() || np.domain == "ai.onnx") {
        return Ok(None);
    }
    match np.op_type.as_str() {
        "ReduceMean" => reduce_mean(np, opset, scope),
        "Split" => split(np, opset, scope),
        _ => Ok(None),
    }
}

/// Split as one Slice per output (opset 10+ form: starts, ends and axes as constants added
/// to the scope, named after the output). Sizes from the `split` attribute (before opset
/// 13) or input (from 13), or equal parts of the axis (`num_outputs` from opset 18, the
/// last part smaller when the axis does not divide).
fn split(np: &NodeProto, opset: i64, scope: &mut Scope) -> Result<Option<Vec<NodeProto>>> {
    let Some(x) = np.input.first().filter(|x| !x.is_empty()) else {
        return Err(Error::invalid("Split needs an input"));
    };
    let Some(shape) = scope.shapes.get(x) else {
        return Ok(None);
    };
    let attrs = attrs::Attrs::new(np);
    let rank = shape.rank();
    let axis = crate::ir::norm_axis(attrs.int("axis", 0), rank)?;
    let d = shape.dims[axis] as i64;
    let n = np.output.len() as i64;
    let sizes: Vec<i64> = match ints_operand(np, opset, 13, "split", "Split sizes", scope)? {
        Some(s) => s,
        None => {
            let k = if opset >= 18 && attrs.has("num_outputs") {
                attrs.int("num_outputs", n)
            } else {
                n
            };
            if k < 1 || (opset < 18 && d % k != 0) {
                return Err(Error::invalid(format!(
                    "Split of an axis of {d} into {k} equal parts"
                )));
            }
            let part = (d + k - 1) / k;
            (0..k).map(|i| part.min(d - i * part).max(0)).collect()
        }
    };
    if sizes.len() as i64 != n || sizes.iter().any(|&s| s < 0) || sizes.iter().sum::<i64>() != d {
        return Err(Error::invalid(format!(
            "Split sizes {sizes:?} for {n} outputs of an axis of {d}"
        )));
    }
    let mut nodes = vec![];
    let mut at = 0;
    for (out, &size) in np.output.iter().zip(&sizes) {
        let (start, end) = (at, at + size);
        at = end;
        if out.is_empty() {
            continue;
        }
        let mut s = NodeProto::new();
        s.op_type = "Slice".into();
        s.name = format!("{}::{out}", np.name);
        s.input = vec![x.clone()];
        for (what, v) in [("starts", start), ("ends", end), ("axes", axis as i64)] {
            if opset < 10 {
                let mut a = onnx_protobuf::AttributeProto::new();
                a.name = what.into();
                a.type_ = protobuf::EnumOrUnknown::new(
                    onnx_protobuf::attribute_proto::AttributeType::INTS,
                );
                a.ints = vec![v];
                s.attribute.push(a);
                continue;
            }
            let name = format!("{out}::{what}");
            scope
                .consts
                .insert(name.clone(), Constant::i64(vec![1], vec![v]));
            scope.shapes.insert(name.clone(), Shape::fixed(vec![1]));
            s.input.push(name);
        }
        s.output = vec![out.clone()];
        nodes.push(s);
    }
    Ok(Some(nodes))
}

/// A list of ints that a node has as the attribute `attr` before opset `since` and as its
/// second input from then on, which must then be a constant (`what` names it in the error).
fn ints_operand(
    np: &NodeProto,
    opset: i64,
    since: i64,
    attr: &str,
    what: &str,
    scope: &Scope,
) -> Result<Option<Vec<i64>>> {
    if opset < since {
        return Ok(attrs::Attrs::new(np).ints(attr));
    }
    match np.input.get(1).filter(|a| !a.is_empty()) {
        None => Ok(None),
        Some(a) => Ok(Some(
            scope
                .consts
                .get(a)
                .ok_or_else(|| {
                    Error::unsupported(format!(
                        "{what} (input '{a}') are computed at run time; ecc needs them constant"
                    ))
                })?
                .as_i64(),
        )),
    }
}

/// ReduceMean over every spatial axis as GlobalAveragePool [+ Flatten].
fn reduce_mean(np: &NodeProto, opset: i64, scope: &Scope) -> Result<Option<Vec<NodeProto>>> {
    let Some(x) = np.input.first().filter(|x| !x.is_empty()) else {
        return Err(Error::invalid("ReduceMean needs an input"));
    };
    let Some(shape) = scope.shapes.get(x) else {
        return Ok(None); // import_node names the missing input.
    };
    let attrs = attrs::Attrs::new(np);
    let rank = shape.rank() as i64;
    let axes = ints_operand(np, opset, 18, "axes", "ReduceMean axes", scope)?;
    let Some(axes) = axes.filter(|a| !a.is_empty()) else {
        return Err(Error::unsupported(
            "ReduceMean over all axes (ecc reads the mean over the spatial axes)",
        ));
    };
    let mut norm: Vec<i64> = axes
        .iter()
        .map(|&a| if a < 0 { a + rank } else { a })
        .collect();
    norm.sort_unstable();
    if rank < 3 || norm != (2..rank).collect::<Vec<_>>() {
        return Err(Error::unsupported(format!(
            "ReduceMean over axes {axes:?} of a rank-{rank} tensor (ecc reads the mean over all spatial axes, 2..{rank})"
        )));
    }
    let keep = attrs.int("keepdims", 1) != 0;
    let out = np.output.first().cloned().unwrap_or_default();
    let mut pool = NodeProto::new();
    pool.op_type = "GlobalAveragePool".into();
    pool.name = np.name.clone();
    pool.input = vec![x.clone()];
    pool.output = vec![if keep {
        out.clone()
    } else {
        format!("{out}::keepdims")
    }];
    if keep {
        return Ok(Some(vec![pool]));
    }
    let mut flat = NodeProto::new();
    flat.op_type = "Flatten".into();
    flat.name = format!("{}::flatten", np.name);
    flat.input = pool.output.clone();
    flat.output = vec![out];
    Ok(Some(vec![pool, flat]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::tensor::encode;
    use onnx_protobuf::{
        attribute_proto::AttributeType, AttributeProto, GraphProto, OperatorSetIdProto,
    };

    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = output.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n.attribute = attrs;
        n
    }

    fn tensor_attr(name: &str, c: &Constant) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.type_ = protobuf::EnumOrUnknown::new(AttributeType::TENSOR);
        a.t = protobuf::MessageField::some(encode("", c));
        a
    }

    fn input(name: &str, dims: &[DimDecl]) -> ValueInfoProto {
        crate::export::value_info(name, 1, dims)
    }

    /// ReduceMean over the spatial axes, as the dynamo exporter writes it (opset 18: axes as
    /// an input; keepdims 1 and 0) and as older exporters do (opset 13: an axes attribute):
    /// GlobalAveragePool, with Flatten for keepdims=0, computing the spatial mean.
    #[test]
    fn reduce_mean_over_spatial_axes_is_a_global_average_pool() {
        for (opset, keepdims) in [(18, 1), (18, 0), (13, 1), (13, 0)] {
            let mut g = GraphProto::new();
            let n = DimDecl::Param("N".into());
            let dims = [
                n.clone(),
                DimDecl::Value(3),
                DimDecl::Value(4),
                DimDecl::Value(5),
            ];
            g.input.push(input("x", &dims));
            let mut keep = AttributeProto::new();
            keep.name = "keepdims".into();
            keep.type_ = protobuf::EnumOrUnknown::new(AttributeType::INT);
            keep.i = keepdims;
            let mut attrs = vec![keep];
            let mut inputs = vec!["x"];
            if opset >= 18 {
                g.initializer
                    .push(encode("axes", &Constant::i64(vec![2], vec![-1, 2])));
                inputs.push("axes");
            } else {
                let mut axes = AttributeProto::new();
                axes.name = "axes".into();
                axes.type_ = protobuf::EnumOrUnknown::new(AttributeType::INTS);
                axes.ints = vec![2, 3];
                attrs.push(axes);
            }
            g.node.push(node("ReduceMean", &inputs, "m", attrs));
            g.output.push(input("m", &[]));
            let graph = import_model(&model(g, opset), &ImportOptions::default()).unwrap();
            let ops: Vec<&str> = graph.nodes.iter().map(|n| n.op.onnx_name()).collect();
            let want: &[&str] = if keepdims == 1 {
                &["GlobalAveragePool"]
            } else {
                &["GlobalAveragePool", "Flatten"]
            };
            assert_eq!(ops, want, "opset {opset}, keepdims {keepdims}");
            let x = candle_core::Tensor::arange(0f32, 120.0, &candle_core::Device::Cpu)
                .unwrap()
                .reshape((2, 3, 4, 5))
                .unwrap();
            let y = crate::exec::Executor::new(&graph)
                .unwrap()
                .forward(std::slice::from_ref(&x))
                .unwrap();
            let want = x.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap();
            let want = if keepdims == 1 {
                want
            } else {
                want.flatten_from(1).unwrap()
            };
            assert_eq!(y[0].dims(), want.dims());
            let d = (&y[0] - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }

    fn model(g: GraphProto, opset: i64) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let mut o = OperatorSetIdProto::new();
        o.version = opset;
        m.opset_import.push(o);
        m.graph = protobuf::MessageField::some(g);
        m
    }

    /// What `torch.onnx.export(..., optimize=False)` writes for a conv without bias: a zero
    /// bias made by Shape(weight) -> Expand -> CastLike(like the input) -> Expand. It folds
    /// into one zero bias; the Conv is the only node.
    #[test]
    fn expand_and_cast_like_over_constants_fold() {
        let mut g = GraphProto::new();
        let n = DimDecl::Param("N".into());
        g.input.push(input(
            "x",
            &[
                n.clone(),
                DimDecl::Value(2),
                DimDecl::Value(4),
                DimDecl::Value(4),
            ],
        ));
        g.initializer.push(encode(
            "w",
            &Constant::f32(vec![3, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        ));
        g.initializer
            .push(encode("axis0", &Constant::i64(vec![1], vec![0])));
        g.initializer
            .push(encode("zero", &Constant::i64(vec![], vec![0])));
        g.node.push(node("Shape", &["w"], "ws", vec![]));
        g.node.push(node("Gather", &["ws", "zero"], "o", vec![]));
        g.node
            .push(node("Unsqueeze", &["o", "axis0"], "o1", vec![]));
        g.node.push(node("CastLike", &["zero", "x"], "zf", vec![]));
        g.node.push(node("Expand", &["zf", "o1"], "b", vec![]));
        g.node.push(node("Conv", &["x", "w", "b"], "y", vec![]));
        g.output.push(input(
            "y",
            &[n, DimDecl::Value(3), DimDecl::Value(4), DimDecl::Value(4)],
        ));
        let graph = import_model(&model(g, 18), &ImportOptions::default()).unwrap();
        let ops: Vec<&str> = graph.nodes.iter().map(|n| n.op.onnx_name()).collect();
        assert_eq!(ops, ["Conv"]);
        assert_eq!(graph.params["b"], Constant::f32(vec![3], vec![0.0; 3]));
    }

    /// A Gather over a float initializer stays a node (its data is a parameter: the EC
    /// graph's V's), while a Gather over a folded shape folds.
    #[test]
    fn gather_over_a_float_initializer_is_a_node() {
        let mut g = GraphProto::new();
        g.input
            .push(input("x", &[DimDecl::Value(1), DimDecl::Value(3)]));
        g.initializer
            .push(encode("v", &Constant::f32(vec![2], vec![2.0, 3.0])));
        g.initializer
            .push(encode("idx", &Constant::i64(vec![3], vec![1, 0, 1])));
        g.node.push(node("Gather", &["v", "idx"], "s", vec![]));
        g.node.push(node("Mul", &["x", "s"], "y", vec![]));
        g.output
            .push(input("y", &[DimDecl::Value(1), DimDecl::Value(3)]));
        let graph = import_model(&model(g, 13), &ImportOptions::default()).unwrap();
        let ops: Vec<&str> = graph.nodes.iter().map(|n| n.op.onnx_name()).collect();
        assert_eq!(ops, ["Gather", "Mul"]);
        assert!(graph.params.contains_key("v") && !graph.params.contains_key("s"));
        let ex = crate::exec::Executor::new(&graph).unwrap();
        let x =
            candle_core::Tensor::new(&[[1f32, 10.0, 100.0]], &candle_core::Device::Cpu).unwrap();
        let y = ex.forward(&[x]).unwrap()[0].to_vec2::<f32>().unwrap();
        assert_eq!(y, [[3.0, 20.0, 300.0]]);
    }

    /// Opset 13: Shape -> Gather -> Unsqueeze -> Concat feeding a Reshape, a Constant,
    /// a ConstantOfShape weight, and Clip with constant bounds: all fold into 3 nodes.
    #[test]
    fn shape_subgraphs_and_constants_fold() {
        let mut g = GraphProto::new();
        let n = DimDecl::Param("N".into());
        g.input.push(input(
            "x",
            &[n.clone(), DimDecl::Value(2), DimDecl::Value(3)],
        ));
        g.initializer
            .push(encode("idx0", &Constant::i64(vec![], vec![0])));
        g.initializer
            .push(encode("ax0", &Constant::i64(vec![1], vec![0])));
        g.initializer
            .push(encode("wshape", &Constant::i64(vec![1], vec![6])));
        g.initializer
            .push(encode("lo", &Constant::f32(vec![], vec![0.0])));
        g.node.push(node("Shape", &["x"], "s", vec![]));
        g.node.push(node("Gather", &["s", "idx0"], "b", vec![]));
        g.node.push(node("Unsqueeze", &["b", "ax0"], "b1", vec![]));
        g.node.push(node(
            "Constant",
            &[],
            "minus1",
            vec![tensor_attr("value", &Constant::i64(vec![1], vec![-1]))],
        ));
        g.node.push(node(
            "Concat",
            &["b1", "minus1"],
            "target",
            vec![{
                let mut a = AttributeProto::new();
                a.name = "axis".into();
                a.type_ = protobuf::EnumOrUnknown::new(AttributeType::INT);
                a
            }],
        ));
        g.node
            .push(node("Reshape", &["x", "target"], "flat", vec![]));
        g.node.push(node(
            "ConstantOfShape",
            &["wshape"],
            "w",
            vec![tensor_attr("value", &Constant::f32(vec![1], vec![0.5]))],
        ));
        g.node.push(node("Add", &["flat", "w"], "y", vec![]));
        g.node.push(node("Clip", &["y", "lo", ""], "z", vec![]));
        g.output.push(input("z", &[n, DimDecl::Value(6)]));
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.producer_name = "tester".into();
        m.producer_version = "9.9".into();
        m.doc_string = "a doc".into();
        let mut kv = onnx_protobuf::StringStringEntryProto::new();
        kv.key = "author".into();
        kv.value = "someone".into();
        m.metadata_props.push(kv);
        let mut o = OperatorSetIdProto::new();
        o.version = 13;
        m.opset_import.push(o);
        m.graph = protobuf::MessageField::some(g);

        let graph = import_model(&m, &ImportOptions::default()).unwrap();
        let ops: Vec<&str> = graph.nodes.iter().map(|n| n.op.onnx_name()).collect();
        assert_eq!(ops, ["Reshape", "Add", "Clip"]);
        assert_eq!(graph.params.keys().collect::<Vec<_>>(), ["w"]);
        assert_eq!(graph.shapes["z"].to_string(), "[N, 6]");

        let ex = crate::exec::Executor::new(&graph).unwrap();
        let x = candle_core::Tensor::arange(-12f32, 12.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((4, 2, 3))
            .unwrap();
        let y = ex.forward(&[x]).unwrap();
        assert_eq!(y[0].dims(), [4, 6]);
        let v = y[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = (-12..12).map(|i| (i as f32 + 0.5).max(0.0)).collect();
        assert_eq!(v, want);

        // And the export writes it back in opset-13 form: it imports again to the same graph.
        let again = load_bytes(
            &crate::export::to_bytes(&graph).unwrap(),
            &ImportOptions::default(),
        )
        .unwrap();
        assert_eq!(again.nodes, graph.nodes);
        assert_eq!(again.params, graph.params);
        assert_eq!(again.consts, graph.consts);
        assert_eq!(again.meta, graph.meta);
        assert_eq!(
            again.meta.metadata,
            vec![("author".to_string(), "someone".to_string())]
        );
    }

    /// The outputs of a model of one 2x3 input on [[-1, 2, -3], [4, -5, 6]], flattened.
    fn run_2x3(g: &Graph) -> Vec<f32> {
        let ex = crate::exec::Executor::new(g).unwrap();
        let x = candle_core::Tensor::new(
            &[[-1f32, 2.0, -3.0], [4.0, -5.0, 6.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        ex.forward(&[x]).unwrap()[0]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    /// A Relu made with today's `onnx.helper.make_model` defaults (IR 14, opset 28)
    /// imports and runs; one stamped newer than ecc knows is refused with a line that says
    /// so (issue 16).
    #[test]
    fn the_newest_stamps_import_and_newer_ones_are_named() {
        let model = |ir: i64, opset: i64| {
            let mut g = GraphProto::new();
            g.name = "g".into();
            g.input
                .push(input("x", &[DimDecl::Value(2), DimDecl::Value(3)]));
            g.node.push(node("Relu", &["x"], "y", vec![]));
            g.output
                .push(input("y", &[DimDecl::Value(2), DimDecl::Value(3)]));
            let mut m = ModelProto::new();
            m.ir_version = ir;
            let mut o = OperatorSetIdProto::new();
            o.version = opset;
            m.opset_import.push(o);
            m.graph = protobuf::MessageField::some(g);
            m
        };
        let g = import_model(&model(14, 28), &ImportOptions::default()).unwrap();
        assert_eq!(run_2x3(&g), [0.0, 2.0, 0.0, 4.0, 0.0, 6.0]);
        for (ir, opset, want) in [
            (15, 28, "IR version 15: newer"),
            (14, 29, "opset 29: newer"),
        ] {
            let e = import_model(&model(ir, opset), &ImportOptions::default()).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    /// A float64 model with Casts at run time (what skl2onnx writes on an input): the Casts
    /// between float types are identities, and the float64 values computed in float32 are
    /// named in one note, never silently (issue 16 item 2).
    #[test]
    fn float64_values_and_runtime_casts_are_stated() {
        let mut g = GraphProto::new();
        g.name = "g".into();
        let d = [DimDecl::Value(2), DimDecl::Value(3)];
        g.input
            .push(crate::export::value_info("x", tensor::dtype::DOUBLE, &d));
        let mut b = onnx_protobuf::TensorProto::new();
        b.name = "b".into();
        b.dims = vec![3];
        b.data_type = tensor::dtype::DOUBLE;
        b.double_data = vec![0.5, -0.5, 1.0];
        g.initializer.push(b);
        let cast = |to: i32| {
            let mut a = AttributeProto::new();
            a.name = "to".into();
            a.type_ = protobuf::EnumOrUnknown::new(AttributeType::INT);
            a.i = to as i64;
            a
        };
        g.node
            .push(node("Cast", &["x"], "xf", vec![cast(tensor::dtype::FLOAT)]));
        g.node.push(node("Add", &["xf", "b"], "s", vec![]));
        g.node.push(node("Relu", &["s"], "r", vec![]));
        g.node
            .push(node("Cast", &["r"], "y", vec![cast(tensor::dtype::DOUBLE)]));
        g.output
            .push(crate::export::value_info("y", tensor::dtype::DOUBLE, &d));
        let graph = import_model(&model(g, 13), &ImportOptions::default()).unwrap();
        assert_eq!(graph.meta.notes.len(), 1, "{:?}", graph.meta.notes);
        let note = &graph.meta.notes[0];
        for part in [
            "float32",
            "input 'x' (double)",
            "output 'y' (double)",
            "a Cast to double",
            "1 double initializer",
        ] {
            assert!(note.contains(part), "{part}: {note}");
        }
        assert_eq!(run_2x3(&graph), [0.0, 1.5, 0.0, 4.5, 0.0, 7.0]);
        // A float32 model has no note.
        let f32_model = crate::export::to_bytes(&graph).unwrap();
        let again = load_bytes(&f32_model, &ImportOptions::default()).unwrap();
        assert!(again.meta.notes.is_empty());
    }
}
