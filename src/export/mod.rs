//! Export: IR [`Graph`] -> ONNX `ModelProto`. Names of the graph, nodes and values, opset
//! imports, producer and metadata are kept; attributes are written from the typed ops in the
//! form the model's opset expects; parameters go out as `raw_data` initializers.

use crate::error::{Error, Result};
use crate::import::tensor::{dtype, encode};
use crate::ir::{DimDecl, Graph, Node, Op, ValueInfo};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use protobuf::{EnumOrUnknown, Message, MessageField};
use std::path::Path;

/// AttributeProto's field numbers for `f` and `i` (onnx.proto).
const ATTR_F: u32 = 2;
const ATTR_I: u32 = 3;

/// An INT attribute. Its value is always on the wire: onnx.proto is proto2, where a reader
/// may test the field's presence (onnx2torch reads an absent `transA` as set), but the
/// generated code is proto3-style and omits a 0, so a 0 is written as an explicit field.
fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INT);
    a.i = v;
    if v == 0 {
        a.special_fields.mut_unknown_fields().add_varint(ATTR_I, 0);
    }
    a
}

/// A FLOAT attribute, its value always on the wire (see [`attr_int`]).
fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::FLOAT);
    a.f = v;
    if v == 0.0 {
        a.special_fields
            .mut_unknown_fields()
            .add_fixed32(ATTR_F, v.to_bits());
    }
    a
}

fn attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::STRING);
    a.s = v.as_bytes().to_vec();
    a
}

fn attr_ints(name: &str, v: impl IntoIterator<Item = i64>) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INTS);
    a.ints = v.into_iter().collect();
    a
}

fn sizes(name: &str, v: &[usize]) -> AttributeProto {
    attr_ints(name, v.iter().map(|&x| x as i64))
}

/// The attributes of a node, for the given opset.
fn attributes(op: &Op, opset: i64) -> Vec<AttributeProto> {
    let mut a = vec![];
    match op {
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            a.push(attr_float("alpha", *alpha));
            a.push(attr_float("beta", *beta));
            a.push(attr_int("transA", *trans_a as i64));
            a.push(attr_int("transB", *trans_b as i64));
            if opset < 7 {
                a.push(attr_int("broadcast", 1));
            }
        }
        Op::Binary {
            legacy_axis: Some(axis),
            ..
        } => {
            a.push(attr_int("broadcast", 1));
            a.push(attr_int("axis", *axis as i64));
        }
        // Below opset 7 broadcasting is opt-in; trailing alignment needs broadcast=1 too.
        Op::Binary {
            legacy_axis: None, ..
        } if opset < 7 => a.push(attr_int("broadcast", 1)),
        Op::Conv(c) => {
            a.push(sizes("kernel_shape", &c.kernel));
            a.push(sizes("strides", &c.strides));
            a.push(sizes("pads", &c.pads));
            a.push(sizes("dilations", &c.dilations));
            a.push(attr_int("group", c.group as i64));
        }
        // A negative end pad is written as output_padding.
        Op::ConvTranspose(c) => {
            let ns = c.kernel.len();
            let pads: Vec<usize> = c.pads.iter().map(|&p| p.max(0) as usize).collect();
            let extra: Vec<usize> = c.pads[ns..].iter().map(|&p| (-p).max(0) as usize).collect();
            a.push(sizes("kernel_shape", &c.kernel));
            a.push(sizes("strides", &c.strides));
            a.push(sizes("pads", &pads));
            a.push(sizes("dilations", &c.dilations));
            a.push(attr_int("group", c.group as i64));
            if extra.iter().any(|&e| e > 0) {
                a.push(sizes("output_padding", &extra));
            }
        }
        // The scales / sizes / roi operands are the node's own constant inputs, written back
        // as read; the attributes as the opset spells them (defaults left out).
        Op::Resize(r) => {
            use crate::ir::{Interp, NearestMode};
            let mode = match r.interp {
                Interp::Nearest(_) => "nearest",
                Interp::Linear => "linear",
                Interp::Cubic(_) => "cubic",
            };
            a.push(attr_string("mode", mode));
            if let Some(s) = &r.attr_scales {
                let mut f = AttributeProto::new();
                f.name = "scales".into();
                f.type_ = EnumOrUnknown::new(AttributeType::FLOATS);
                f.floats = s.clone();
                a.push(f);
            }
            if !r.upsample && opset >= 11 {
                if r.coords != "half_pixel" {
                    a.push(attr_string("coordinate_transformation_mode", &r.coords));
                }
                match r.interp {
                    Interp::Nearest(m) if m != NearestMode::RoundPreferFloor => {
                        let m = match m {
                            NearestMode::RoundPreferCeil => "round_prefer_ceil",
                            NearestMode::Floor => "floor",
                            _ => "ceil",
                        };
                        a.push(attr_string("nearest_mode", m));
                    }
                    Interp::Cubic(c) if c != -0.75 => a.push(attr_float("cubic_coeff_a", c)),
                    _ => {}
                }
                if r.exclude_outside {
                    a.push(attr_int("exclude_outside", 1));
                }
                if r.extrapolation != 0.0 {
                    a.push(attr_float("extrapolation_value", r.extrapolation));
                }
            }
            if !r.upsample && opset >= 18 {
                if r.antialias {
                    a.push(attr_int("antialias", 1));
                }
                if r.keep_aspect != "stretch" {
                    a.push(attr_string("keep_aspect_ratio_policy", &r.keep_aspect));
                }
                if let Some(axes) = &r.axes {
                    a.push(attr_ints("axes", axes.iter().copied()));
                }
            }
        }
        Op::MaxPool(p) | Op::AveragePool { pool: p, .. } => {
            a.push(sizes("kernel_shape", &p.kernel));
            a.push(sizes("strides", &p.strides));
            a.push(sizes("pads", &p.pads));
            let is_max = matches!(op, Op::MaxPool(_));
            if is_max && opset >= 10 {
                a.push(sizes("dilations", &p.dilations));
            }
            if opset >= 10 {
                a.push(attr_int("ceil_mode", p.ceil_mode as i64));
            }
            if let Op::AveragePool {
                count_include_pad, ..
            } = op
            {
                if opset >= 7 {
                    a.push(attr_int("count_include_pad", *count_include_pad as i64));
                }
            }
        }
        Op::LeakyRelu { alpha } => a.push(attr_float("alpha", *alpha)),
        Op::HardSigmoid { alpha, beta } => {
            a.push(attr_float("alpha", *alpha));
            a.push(attr_float("beta", *beta));
        }
        Op::Gelu { tanh: true } => a.push(attr_string("approximate", "tanh")),
        Op::InstanceNorm { epsilon } => a.push(attr_float("epsilon", *epsilon)),
        Op::Pad { pads, mode } => {
            let (name, value) = match mode {
                crate::ir::PadMode::Constant(v) => ("constant", *v),
                crate::ir::PadMode::Reflect => ("reflect", 0.0),
                crate::ir::PadMode::Edge => ("edge", 0.0),
                crate::ir::PadMode::Wrap => ("wrap", 0.0),
            };
            a.push(attr_string("mode", name));
            if opset < 11 {
                a.push(attr_ints("pads", pads.iter().copied()));
                a.push(attr_float("value", value));
            }
        }
        Op::Slice {
            axes,
            starts,
            steps,
            lens,
        } if opset < 10 => {
            // Only steps of 1 exist before opset 10.
            a.push(sizes("starts", starts));
            let ends: Vec<i64> = (0..axes.len())
                .map(|k| (starts[k] as i64) + steps[k] * lens[k] as i64)
                .collect();
            a.push(attr_ints("ends", ends));
            a.push(sizes("axes", axes));
        }
        Op::Clip { min, max } if opset < 11 => {
            a.push(attr_float("min", *min));
            a.push(attr_float("max", *max));
        }
        Op::Softmax { axis, .. } | Op::LogSoftmax { axis, .. } => a.push(attr_int("axis", *axis)),
        Op::BatchNorm { epsilon, momentum } => {
            a.push(attr_float("epsilon", *epsilon));
            a.push(attr_float("momentum", *momentum));
            if opset < 7 {
                a.push(attr_int("is_test", 1));
            }
        }
        Op::Dropout { ratio } if opset < 12 => {
            a.push(attr_float("ratio", *ratio));
            if opset < 7 {
                a.push(attr_int("is_test", 1));
            }
        }
        Op::Flatten { axis } | Op::Concat { axis } => a.push(attr_int("axis", *axis)),
        Op::Transpose { perm } => a.push(sizes("perm", perm)),
        Op::Squeeze { axes } | Op::Unsqueeze { axes } if opset < 13 && !axes.is_empty() => {
            a.push(attr_ints("axes", axes.iter().copied()))
        }
        Op::Lrn {
            alpha,
            beta,
            bias,
            size,
        } => {
            a.push(attr_float("alpha", *alpha));
            a.push(attr_float("beta", *beta));
            a.push(attr_float("bias", *bias));
            a.push(attr_int("size", *size as i64));
        }
        Op::Gather { axis, .. } => a.push(attr_int("axis", *axis as i64)),
        Op::ScatterNd { .. } if opset >= 16 => a.push(attr_string("reduction", "none")),
        _ => {}
    }
    a
}

fn node_proto(n: &Node, opset: i64) -> NodeProto {
    let mut p = NodeProto::new();
    p.name = n.name.clone();
    p.op_type = n.op.onnx_name().into();
    p.input = n.inputs.clone();
    if matches!(n.op, Op::ScatterNd { .. }) && p.input.len() == 3 {
        // The IR's order (data, updates, indices) back to ONNX's.
        p.input.swap(1, 2);
    }
    p.output = n.outputs.clone();
    p.attribute = attributes(&n.op, opset);
    p
}

/// A tensor ValueInfo with the given element type and declared dims.
pub(crate) fn value_info(name: &str, elem_type: i32, dims: &[DimDecl]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = match d {
            DimDecl::Value(v) => Some(Value::DimValue(*v)),
            DimDecl::Param(p) => Some(Value::DimParam(p.clone())),
            DimDecl::Unknown => None,
        };
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem_type;
    tt.shape = MessageField::some(shape);
    let mut t = TypeProto::new();
    t.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = MessageField::some(t);
    v
}

/// The dims to declare for a graph output: as the file declared them, else the inferred
/// shape with a symbolic batch.
fn output_dims(g: &Graph, o: &ValueInfo) -> Vec<DimDecl> {
    if !o.declared.is_empty() {
        return o.declared.clone();
    }
    match g.shapes.get(&o.name) {
        Some(s) => s
            .dims
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if Some(i) == s.batch {
                    DimDecl::Param("N".into())
                } else {
                    DimDecl::Value(d as i64)
                }
            })
            .collect(),
        None => vec![],
    }
}

/// Build the ModelProto of a graph.
pub fn to_model(g: &Graph) -> ModelProto {
    let opset = g.meta.opset();
    let mut gp = GraphProto::new();
    gp.name = g.meta.graph_name.clone();
    gp.doc_string = g.meta.graph_doc.clone();
    gp.node = g.nodes.iter().map(|n| node_proto(n, opset)).collect();
    // From opset 12 on, Dropout's ratio is an input (default 0.5): write it as a constant
    // when the node has none.
    for (n, np) in g.nodes.iter().zip(gp.node.iter_mut()) {
        if let Op::Dropout { ratio } = n.op {
            if opset >= 12 && n.inputs.len() < 2 && ratio != 0.5 {
                let name = format!("{}::ratio", n.outputs[0]);
                gp.initializer.push(encode(
                    &name,
                    &crate::ir::Constant::f32(vec![], vec![ratio]),
                ));
                np.input.push(name);
            }
        }
    }
    for v in &g.inputs {
        gp.input.push(value_info(&v.name, v.elem_type, &v.declared));
    }
    for (name, c) in g.params.iter().chain(g.consts.iter()) {
        gp.initializer.push(encode(name, c));
        // IR 3 requires every initializer to be listed among the graph inputs.
        if g.meta.ir_version < 4 {
            let et = if c.is_f32() {
                dtype::FLOAT
            } else {
                dtype::INT64
            };
            let dims: Vec<DimDecl> = c.dims.iter().map(|&d| DimDecl::Value(d as i64)).collect();
            gp.input.push(value_info(name, et, &dims));
        }
    }
    let computed = |o: &ValueInfo| value_info(&o.name, o.elem_type, &output_dims(g, o));
    match &g.meta.tail {
        None => gp.output = g.outputs.iter().map(computed).collect(),
        Some(t) => attach_tail(&mut gp, g, t, &computed),
    }
    let mut m = ModelProto::new();
    m.ir_version = g.meta.ir_version;
    m.opset_import = g
        .meta
        .opsets
        .iter()
        .map(|(d, v)| {
            let mut o = OperatorSetIdProto::new();
            o.domain = d.clone();
            o.version = *v;
            o
        })
        .collect();
    m.producer_name = g.meta.producer_name.clone();
    m.producer_version = g.meta.producer_version.clone();
    m.domain = g.meta.domain.clone();
    m.model_version = g.meta.model_version;
    m.doc_string = g.meta.doc_string.clone();
    m.metadata_props = g
        .meta
        .metadata
        .iter()
        .map(|(k, v)| {
            let mut e = StringStringEntryProto::new();
            e.key = k.clone();
            e.value = v.clone();
            e
        })
        .collect();
    m.graph = MessageField::some(gp);
    m
}

/// Write the import's tail (post-processing nodes ecc kept without running) back after the
/// graph: its nodes and initializers as read, the model's outputs in their original order,
/// without the values ecc output only for the tail (`crate::ir::Tail`).
fn attach_tail(
    gp: &mut GraphProto,
    g: &Graph,
    t: &crate::ir::Tail,
    computed: &dyn Fn(&ValueInfo) -> ValueInfoProto,
) {
    use crate::ir::TailOutput;
    use onnx_protobuf::TensorProto;
    gp.node.extend(
        t.nodes
            .iter()
            .filter_map(|b| NodeProto::parse_from_bytes(b).ok()),
    );
    for b in &t.initializers {
        let Ok(init) = TensorProto::parse_from_bytes(b) else {
            continue;
        };
        if g.meta.ir_version < 4 {
            let dims: Vec<DimDecl> = init.dims.iter().map(|&d| DimDecl::Value(d)).collect();
            gp.input.push(value_info(&init.name, init.data_type, &dims));
        }
        gp.initializer.push(init);
    }
    let mut written: Vec<&str> = vec![];
    for o in &t.outputs {
        match o {
            TailOutput::Computed(name) => {
                if let Some(v) = g.outputs.iter().find(|v| &v.name == name) {
                    gp.output.push(computed(v));
                    written.push(name);
                }
            }
            TailOutput::Kept(b) => {
                if let Ok(v) = ValueInfoProto::parse_from_bytes(b) {
                    gp.output.push(v);
                }
            }
        }
    }
    // Outputs of ecc's graph the original did not have (and that the tail does not read).
    for v in &g.outputs {
        if !written.contains(&v.name.as_str()) && !t.hidden.contains(&v.name) {
            gp.output.push(computed(v));
        }
    }
}

/// Serialize a graph to ONNX bytes.
pub fn to_bytes(g: &Graph) -> Result<Vec<u8>> {
    to_model(g)
        .write_to_bytes()
        .map_err(|e| Error::exec(format!("cannot serialize the model: {e}")))
}

/// Write a graph as an ONNX file, atomically ([`crate::files::write_atomic`]).
pub fn write_file(g: &Graph, path: &Path) -> Result<()> {
    crate::files::write_bytes(path, &to_bytes(g)?)
}
