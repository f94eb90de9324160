//! The import table: every supported ONNX op type, by name, with the function that builds
//! its IR op from the node's attributes and constant operands. Opset-dependent defaults are
//! resolved here and nowhere else.

use super::attrs::Attrs;
use super::fold;
use crate::error::{Error, ErrorKind, Result};
use crate::ir::{
    conv_out_len, BinaryKind, Constant, ConvAttrs, ConvTransposeAttrs, Interp, NearestMode, Op,
    PadMode, PoolAttrs, ResizeAttrs, Shape,
};
use onnx_protobuf::NodeProto;
use std::collections::HashMap;

/// What a node becomes.
pub enum Built {
    Op(Op),
    /// The node folds: its outputs are constants.
    Consts(Vec<Constant>),
}

/// What a builder may look at.
pub struct NodeCtx<'a> {
    pub node: &'a NodeProto,
    pub attrs: Attrs<'a>,
    pub opset: i64,
    shapes: &'a HashMap<String, Shape>,
    consts: &'a HashMap<String, Constant>,
    /// The file's float initializers (parameters when read as data).
    params: Option<&'a std::collections::HashSet<String>>,
}

impl<'a> NodeCtx<'a> {
    pub fn new(
        node: &'a NodeProto,
        opset: i64,
        shapes: &'a HashMap<String, Shape>,
        consts: &'a HashMap<String, Constant>,
    ) -> Self {
        NodeCtx {
            node,
            attrs: Attrs::new(node),
            opset,
            shapes,
            consts,
            params: None,
        }
    }

    /// The same, knowing which constants are the file's float initializers.
    pub fn with_params(mut self, params: &'a std::collections::HashSet<String>) -> Self {
        self.params = Some(params);
        self
    }

    /// Whether input `i` is one of the file's float initializers.
    pub fn is_param(&self, i: usize) -> bool {
        self.input_name(i)
            .is_some_and(|n| self.params.is_some_and(|p| p.contains(n)))
    }

    fn input_name(&self, i: usize) -> Option<&'a str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Shape of input `i`; an error when it is absent.
    pub fn shape(&self, i: usize) -> Result<&'a Shape> {
        let name = self
            .input_name(i)
            .ok_or_else(|| Error::invalid(format!("input {i} is missing")))?;
        Ok(&self.shapes[name])
    }

    /// Constant value of input `i`, if it is present and constant.
    pub fn constant(&self, i: usize) -> Option<&'a Constant> {
        self.input_name(i).and_then(|n| self.consts.get(n))
    }

    /// Input `i` must be a constant (a static operand); `None` if absent.
    pub fn static_input(&self, i: usize, what: &str) -> Result<Option<&'a Constant>> {
        match self.input_name(i) {
            None => Ok(None),
            Some(n) => self.consts.get(n).map(Some).ok_or_else(|| {
                Error::unsupported(format!(
                    "{what} (input '{n}') is computed at run time; ecc needs it constant"
                ))
            }),
        }
    }

    pub fn all_const(&self) -> bool {
        self.node
            .input
            .iter()
            .filter(|n| !n.is_empty())
            .all(|n| self.consts.contains_key(n))
    }

    pub fn n_inputs(&self) -> usize {
        self.node.input.len()
    }
}

type Builder = fn(&NodeCtx) -> Result<Built>;

/// The table. One line per ONNX op type.
const TABLE: &[(&str, Builder)] = &[
    ("Gemm", gemm),
    ("MatMul", |_| Ok(Built::Op(Op::MatMul))),
    ("Add", |c| binary(c, BinaryKind::Add)),
    ("Sub", |c| binary(c, BinaryKind::Sub)),
    ("Mul", |c| binary(c, BinaryKind::Mul)),
    ("Div", |c| binary(c, BinaryKind::Div)),
    ("Sum", |_| Ok(Built::Op(Op::Sum))),
    ("Max", |_| Ok(Built::Op(Op::Max))),
    ("Min", |_| Ok(Built::Op(Op::Min))),
    ("Mean", |_| Ok(Built::Op(Op::Mean))),
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("MaxPool", max_pool),
    ("AveragePool", average_pool),
    ("GlobalAveragePool", |_| {
        Ok(Built::Op(Op::GlobalAveragePool))
    }),
    ("GlobalMaxPool", |_| Ok(Built::Op(Op::GlobalMaxPool))),
    ("Relu", |_| Ok(Built::Op(Op::Relu))),
    ("LeakyRelu", |c| {
        Ok(Built::Op(Op::LeakyRelu {
            alpha: c.attrs.float("alpha", 0.01),
        }))
    }),
    ("PRelu", |_| Ok(Built::Op(Op::PRelu))),
    ("Clip", clip),
    ("Sigmoid", |_| Ok(Built::Op(Op::Sigmoid))),
    ("Tanh", |_| Ok(Built::Op(Op::Tanh))),
    ("HardSigmoid", |c| {
        Ok(Built::Op(Op::HardSigmoid {
            alpha: c.attrs.float("alpha", 0.2),
            beta: c.attrs.float("beta", 0.5),
        }))
    }),
    ("HardSwish", |_| Ok(Built::Op(Op::HardSwish))),
    ("Gelu", gelu),
    ("Softmax", |c| softmax(c, false)),
    ("LogSoftmax", |c| softmax(c, true)),
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", |c| {
        Ok(Built::Op(Op::InstanceNorm {
            epsilon: c.attrs.float("epsilon", 1e-5),
        }))
    }),
    ("Dropout", dropout),
    ("Identity", |_| Ok(Built::Op(Op::Identity))),
    ("Flatten", |c| {
        Ok(Built::Op(Op::Flatten {
            axis: c.attrs.int("axis", 1),
        }))
    }),
    ("Reshape", reshape),
    ("Pad", pad),
    ("Resize", |c| resize(c, false)),
    ("Upsample", |c| resize(c, true)),
    ("Slice", slice),
    ("Transpose", transpose),
    ("Concat", concat),
    ("Squeeze", |c| axes_op(c, true)),
    ("Unsqueeze", |c| axes_op(c, false)),
    ("LRN", lrn),
    ("Constant", fold::constant),
    ("ConstantOfShape", fold::constant_of_shape),
    ("Shape", fold::shape),
    ("Gather", gather),
    ("ScatterND", scatter_nd),
    ("Cast", fold::cast),
    ("CastLike", fold::cast_like),
    ("Expand", fold::expand),
];

/// The ONNX op types ecc imports, from the table itself (so `ecc ops` cannot drift from
/// it), sorted: those folded at import are marked "(constant inputs)", and ReduceMean, which
/// `desugar` rewrites, says over which axes.
pub fn op_names() -> Vec<String> {
    let folded = ["Constant", "ConstantOfShape", "Shape", "Cast", "Expand"];
    let mut v: Vec<String> = TABLE
        .iter()
        .map(|(n, _)| match *n {
            "Cast" => "Cast (constant inputs; to float or double at run time)".to_string(),
            "Gather" => "Gather (constant indices)".to_string(),
            "CastLike" => "CastLike (to float at run time; any over constants)".to_string(),
            "ScatterND" => "ScatterND (constant indices, no reduction)".to_string(),
            n if folded.contains(&n) && !matches!(n, "Constant" | "ConstantOfShape") => {
                format!("{n} (constant inputs)")
            }
            n => n.to_string(),
        })
        .collect();
    v.push("ReduceMean (over the spatial axes)".into());
    v.push("Split (read as one Slice per output)".into());
    v.sort();
    v
}

/// Whether the importer builds `op_type` (of the default domain), or folds or rewrites it.
pub fn reads(op_type: &str) -> bool {
    matches!(op_type, "ReduceMean" | "Split") || TABLE.iter().any(|(name, _)| *name == op_type)
}

/// Build the op for a node through the table.
pub fn build(ctx: &NodeCtx) -> Result<Built> {
    let op_type = ctx.node.op_type.as_str();
    match TABLE.iter().find(|(name, _)| *name == op_type) {
        Some((_, f)) => f(ctx),
        None => Err(Error::new(ErrorKind::UnsupportedOp(op_type.to_string()))),
    }
}

fn gemm(c: &NodeCtx) -> Result<Built> {
    Ok(Built::Op(Op::Gemm {
        alpha: c.attrs.float("alpha", 1.0),
        beta: c.attrs.float("beta", 1.0),
        trans_a: c.attrs.int("transA", 0) != 0,
        trans_b: c.attrs.int("transB", 0) != 0,
    }))
}

fn binary(c: &NodeCtx, kind: BinaryKind) -> Result<Built> {
    // Before opset 7 broadcasting was opt-in, and `axis` aligned B inside A.
    let legacy_axis = if c.opset < 7 && c.attrs.int("broadcast", 0) != 0 && c.attrs.has("axis") {
        let a = c.shape(0)?;
        let axis = c.attrs.int("axis", 0);
        let axis = if axis < 0 {
            axis + a.rank() as i64
        } else {
            axis
        };
        if axis < 0 || axis as usize > a.rank() {
            return Err(Error::invalid(format!(
                "broadcast axis {axis} for input {a}"
            )));
        }
        Some(axis as usize)
    } else {
        None
    };
    Ok(Built::Op(Op::Binary { kind, legacy_axis }))
}

/// Resolve `auto_pad` into explicit pads for the given input spatial dims.
fn resolve_pads(
    c: &NodeCtx,
    spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<usize>> {
    let n = kernel.len();
    let auto = c.attrs.string("auto_pad", "NOTSET");
    match auto.as_str() {
        "NOTSET" | "" => c.attrs.sizes_n("pads", 2 * n, 0),
        "VALID" => Ok(vec![0; 2 * n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = vec![0; 2 * n];
            for i in 0..n {
                let out = spatial[i].div_ceil(strides[i]);
                let eff = dilations[i] * (kernel[i] - 1) + 1;
                let total = ((out - 1) * strides[i] + eff).saturating_sub(spatial[i]);
                let small = total / 2;
                let (b, e) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[i] = b;
                pads[n + i] = e;
            }
            Ok(pads)
        }
        other => Err(Error::invalid(format!(
            "attribute 'auto_pad' has an unknown value '{other}'"
        ))),
    }
}

/// A window's strides and dilations, checked with its kernel against the input's rank.
fn window_steps(c: &NodeCtx, kernel: &[usize], x: &Shape) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = kernel.len();
    if x.rank() != n + 2 {
        return Err(Error::shape(format!("input {x} for a {n}-D window")));
    }
    if kernel.contains(&0) {
        return Err(Error::invalid(format!(
            "attribute 'kernel_shape' has a zero entry: {kernel:?}"
        )));
    }
    let strides = c.attrs.sizes_n("strides", n, 1)?;
    let dilations = c.attrs.sizes_n("dilations", n, 1)?;
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(Error::invalid("strides and dilations must be positive"));
    }
    Ok((strides, dilations))
}

fn window_attrs(
    c: &NodeCtx,
    kernel: Vec<usize>,
    x: &Shape,
) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let (strides, dilations) = window_steps(c, &kernel, x)?;
    let pads = resolve_pads(c, &x.dims[2..], &kernel, &strides, &dilations)?;
    Ok((strides, pads, dilations))
}

fn conv(c: &NodeCtx) -> Result<Built> {
    let x = c.shape(0)?;
    let w = c.shape(1)?;
    if w.rank() < 3 {
        return Err(Error::shape(format!("Conv weight {w} needs rank >= 3")));
    }
    let kernel = match c.attrs.sizes("kernel_shape")? {
        Some(k) => k,
        None => w.dims[2..].to_vec(),
    };
    let (strides, pads, dilations) = window_attrs(c, kernel.clone(), x)?;
    let group = c.attrs.int("group", 1);
    if group < 1 {
        return Err(Error::invalid(format!("attribute 'group' is {group}")));
    }
    Ok(Built::Op(Op::Conv(ConvAttrs {
        kernel,
        strides,
        pads,
        dilations,
        group: group as usize,
    })))
}

/// ConvTranspose, with `output_shape`, `output_padding` and `auto_pad` resolved into pads
/// as the ONNX reference does: explicit pads (default 0) give stride (in - 1) +
/// output_padding + dilation (kernel - 1) + 1 - pads elements; `output_shape` fixes the
/// length, and with SAME_UPPER / SAME_LOWER (or no pads) the padding it implies is split
/// between the two ends, the larger half at the end (SAME_UPPER) or the beginning.
fn conv_transpose(c: &NodeCtx) -> Result<Built> {
    let x = c.shape(0)?;
    let w = c.shape(1)?;
    if w.rank() < 3 {
        return Err(Error::shape(format!(
            "ConvTranspose weight {w} needs rank >= 3"
        )));
    }
    let kernel = match c.attrs.sizes("kernel_shape")? {
        Some(k) => k,
        None => w.dims[2..].to_vec(),
    };
    let n = kernel.len();
    let (strides, dilations) = window_steps(c, &kernel, x)?;
    let out_pad = c.attrs.sizes_n("output_padding", n, 0)?;
    let group = c.attrs.int("group", 1);
    if group < 1 {
        return Err(Error::invalid(format!("attribute 'group' is {group}")));
    }
    let output_shape = match c.attrs.sizes("output_shape")? {
        None => None,
        // Some writers include the batch and channel dimensions.
        Some(s) if s.len() == n || s.len() == n + 2 => Some(s[s.len() - n..].to_vec()),
        Some(s) => {
            return Err(Error::invalid(format!(
                "attribute 'output_shape' {s:?} for a {n}-D kernel"
            )))
        }
    };
    let auto = c.attrs.string("auto_pad", "NOTSET");
    let same = match auto.as_str() {
        "NOTSET" | "" | "VALID" => None,
        "SAME_UPPER" => Some(true),
        "SAME_LOWER" => Some(false),
        other => {
            return Err(Error::invalid(format!(
                "attribute 'auto_pad' has an unknown value '{other}'"
            )))
        }
    };
    let explicit = if auto == "VALID" {
        Some(vec![0; 2 * n])
    } else if same.is_none() && c.attrs.has("pads") {
        Some(c.attrs.sizes_n("pads", 2 * n, 0)?)
    } else {
        None
    };
    let mut pads = vec![0i64; 2 * n];
    for i in 0..n {
        let full =
            (strides[i] * (x.dims[2 + i].max(1) - 1) + dilations[i] * (kernel[i] - 1) + 1) as i64;
        let (begin, len) = match (&explicit, &output_shape) {
            (Some(p), Some(o)) => (p[i] as i64, o[i] as i64),
            (Some(p), None) => (
                p[i] as i64,
                full + out_pad[i] as i64 - p[i] as i64 - p[n + i] as i64,
            ),
            (None, o) => {
                let len = match (o, same) {
                    (Some(o), _) => o[i] as i64,
                    (None, Some(_)) => (x.dims[2 + i] * strides[i]) as i64,
                    (None, None) => full + out_pad[i] as i64,
                };
                let total = full + out_pad[i] as i64 - len;
                let half = total.div_euclid(2);
                (
                    if same == Some(true) {
                        half
                    } else {
                        total - half
                    },
                    len,
                )
            }
        };
        if begin < 0 {
            return Err(Error::unsupported(format!(
                "ConvTranspose whose output starts before the full result (begin pad {begin} on spatial axis {i})"
            )));
        }
        pads[i] = begin;
        pads[n + i] = full - begin - len;
    }
    Ok(Built::Op(Op::ConvTranspose(ConvTransposeAttrs {
        kernel,
        strides,
        pads,
        dilations,
        group: group as usize,
    })))
}

fn pool_attrs(c: &NodeCtx) -> Result<PoolAttrs> {
    let x = c.shape(0)?;
    let kernel = c
        .attrs
        .sizes("kernel_shape")?
        .ok_or_else(|| Error::invalid("attribute 'kernel_shape' is required"))?;
    let (strides, pads, dilations) = window_attrs(c, kernel.clone(), x)?;
    let ceil_mode = c.attrs.int("ceil_mode", 0) != 0;
    // Validate that at least one window fits, with a message naming the node.
    for i in 0..kernel.len() {
        conv_out_len(
            x.dims[2 + i],
            kernel[i],
            strides[i],
            pads[i],
            pads[kernel.len() + i],
            dilations[i],
            ceil_mode,
        )?;
        if pads[i] >= kernel[i] * dilations[i] || pads[kernel.len() + i] >= kernel[i] * dilations[i]
        {
            return Err(Error::invalid(format!(
                "pads {pads:?} are not smaller than the window {kernel:?}"
            )));
        }
    }
    Ok(PoolAttrs {
        kernel,
        strides,
        pads,
        dilations,
        ceil_mode,
    })
}

fn max_pool(c: &NodeCtx) -> Result<Built> {
    if c.attrs.int("storage_order", 0) != 0 {
        return Err(Error::unsupported("MaxPool storage_order=1"));
    }
    Ok(Built::Op(Op::MaxPool(pool_attrs(c)?)))
}

fn average_pool(c: &NodeCtx) -> Result<Built> {
    Ok(Built::Op(Op::AveragePool {
        pool: pool_attrs(c)?,
        count_include_pad: c.attrs.int("count_include_pad", 0) != 0,
    }))
}

fn scalar(cst: Option<&Constant>, what: &str) -> Result<Option<f32>> {
    match cst {
        None => Ok(None),
        Some(k) if k.is_empty() => Ok(None),
        Some(k) if k.len() == 1 => Ok(Some(k.as_f32()[0])),
        Some(k) => Err(Error::invalid(format!(
            "{what} must be a scalar, has {} values",
            k.len()
        ))),
    }
}

fn clip(c: &NodeCtx) -> Result<Built> {
    let (min, max) = if c.opset < 11 {
        (
            c.attrs.float("min", f32::NEG_INFINITY),
            c.attrs.float("max", f32::INFINITY),
        )
    } else {
        (
            scalar(c.static_input(1, "Clip min")?, "Clip min")?.unwrap_or(f32::NEG_INFINITY),
            scalar(c.static_input(2, "Clip max")?, "Clip max")?.unwrap_or(f32::INFINITY),
        )
    };
    Ok(Built::Op(Op::Clip { min, max }))
}

fn gelu(c: &NodeCtx) -> Result<Built> {
    match c.attrs.string("approximate", "none").as_str() {
        "none" => Ok(Built::Op(Op::Gelu { tanh: false })),
        "tanh" => Ok(Built::Op(Op::Gelu { tanh: true })),
        other => Err(Error::invalid(format!(
            "approximate \"{other}\" (expected \"none\" or \"tanh\")"
        ))),
    }
}

fn softmax(c: &NodeCtx, log: bool) -> Result<Built> {
    let legacy = c.opset < 13;
    let axis = c.attrs.int("axis", if legacy { 1 } else { -1 });
    Ok(Built::Op(if log {
        Op::LogSoftmax { axis, legacy }
    } else {
        Op::Softmax { axis, legacy }
    }))
}

/// Inference and training forms alike (`training_mode=1`, opset 14+, or the running
/// statistics as extra outputs): which form runs is the executor's mode, and the extra
/// outputs (the updated running statistics) are kept by ecc itself, not computed as values.
fn batch_norm(c: &NodeCtx) -> Result<Built> {
    if c.opset < 9 && c.attrs.int("spatial", 1) == 0 {
        return Err(Error::unsupported("BatchNormalization with spatial=0"));
    }
    if c.n_inputs() != 5 {
        return Err(Error::invalid(format!(
            "needs 5 inputs, has {}",
            c.n_inputs()
        )));
    }
    let momentum = c.attrs.float("momentum", 0.9);
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::invalid(format!(
            "momentum {momentum} (expected 0 to 1)"
        )));
    }
    Ok(Built::Op(Op::BatchNorm {
        epsilon: c.attrs.float("epsilon", 1e-5),
        momentum,
    }))
}

/// The drop ratio: an attribute before opset 12, an optional constant input from 12 on.
/// Whether it drops is the executor's mode (the `training_mode` input is not read).
fn dropout(c: &NodeCtx) -> Result<Built> {
    let ratio = if c.opset < 12 {
        c.attrs.float("ratio", 0.5)
    } else {
        match c.static_input(1, "Dropout ratio")? {
            Some(t) => t.as_f32().first().copied().unwrap_or(0.5),
            None => 0.5,
        }
    };
    if !(0.0..1.0).contains(&ratio) {
        return Err(Error::invalid(format!(
            "ratio {ratio} (expected 0 <= ratio < 1)"
        )));
    }
    // training_mode (opset 12+): a model that drops at inference computes a random
    // function; ecc applies Dropout only while it trains.
    if c.opset >= 12 {
        if let Some(t) = c.static_input(2, "Dropout training_mode")? {
            if t.as_i64().first().is_some_and(|&v| v != 0) && ratio > 0.0 {
                return Err(Error::unsupported(
                    "Dropout with training_mode=1 in the model (random at inference; ecc drops only while training)",
                ));
            }
        }
    }
    Ok(Built::Op(Op::Dropout { ratio }))
}

/// Resize (opset 10: X, scales; 11+: X, roi, scales, sizes; 18+: `axes`,
/// `keep_aspect_ratio_policy`, `antialias`) and Upsample (opset 7: `scales` attribute; 9:
/// input), resolved against the input's static shape as the ONNX reference does: with
/// scales, output length floor(scale * in); with sizes, scale out / in (adjusted for
/// `keep_aspect_ratio_policy`). Resize-10 and Upsample use asymmetric coordinates and, for
/// nearest, floor (what onnx's version converter writes for them at opset 11). The batch
/// axis is never resized.
fn resize(c: &NodeCtx, upsample: bool) -> Result<Built> {
    if upsample && !(7..10).contains(&c.opset) {
        return Err(Error::unsupported(format!(
            "Upsample at opset {} (ecc reads its opset 7-9 definitions; it is experimental before 7 and deprecated from 10, where Resize replaces it)",
            c.opset
        )));
    }
    let x = c.shape(0)?;
    let r = x.rank();
    let legacy = upsample || c.opset < 11;
    let mode = c.attrs.string("mode", "nearest");
    let coords = if legacy {
        "asymmetric".to_string()
    } else {
        c.attrs
            .string("coordinate_transformation_mode", "half_pixel")
    };
    let nearest = if legacy {
        "floor".to_string()
    } else {
        c.attrs.string("nearest_mode", "round_prefer_floor")
    };
    let interp = match mode.as_str() {
        "nearest" => Interp::Nearest(match nearest.as_str() {
            "round_prefer_floor" => NearestMode::RoundPreferFloor,
            "round_prefer_ceil" => NearestMode::RoundPreferCeil,
            "floor" => NearestMode::Floor,
            "ceil" => NearestMode::Ceil,
            other => {
                return Err(Error::invalid(format!(
                    "nearest_mode \"{other}\" (expected round_prefer_floor, round_prefer_ceil, floor or ceil)"
                )))
            }
        }),
        "linear" | "bilinear" | "trilinear" => Interp::Linear,
        "cubic" if !legacy => Interp::Cubic(c.attrs.float("cubic_coeff_a", -0.75)),
        other => {
            return Err(Error::invalid(format!(
                "mode \"{other}\" (expected nearest, linear{})",
                if legacy { "" } else { " or cubic" }
            )))
        }
    };
    match coords.as_str() {
        "half_pixel"
        | "half_pixel_symmetric"
        | "pytorch_half_pixel"
        | "align_corners"
        | "asymmetric"
        | "tf_crop_and_resize" => {}
        "tf_half_pixel_for_nn" if c.opset < 13 => {}
        other => {
            return Err(Error::invalid(format!(
                "coordinate_transformation_mode \"{other}\""
            )))
        }
    }
    let antialias = !legacy && c.opset >= 18 && c.attrs.int("antialias", 0) != 0;
    if antialias && matches!(interp, Interp::Nearest(_)) {
        return Err(Error::invalid("antialias with mode nearest"));
    }
    let exclude_outside = !legacy && c.attrs.int("exclude_outside", 0) != 0;
    let keep_aspect = if c.opset >= 18 && !legacy {
        c.attrs.string("keep_aspect_ratio_policy", "stretch")
    } else {
        "stretch".to_string()
    };
    let axes_attr = if c.opset >= 18 && !legacy {
        c.attrs.ints("axes")
    } else {
        None
    };
    let axes: Vec<usize> = match &axes_attr {
        Some(a) => a
            .iter()
            .map(|&a| crate::ir::norm_axis(a, r))
            .collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    // The scales or sizes operand (Upsample 7: the scales attribute, kept for export).
    let attr_scales = if upsample && c.opset < 9 {
        Some(
            c.attrs
                .floats("scales")
                .ok_or_else(|| Error::invalid("attribute 'scales' is required"))?,
        )
    } else {
        None
    };
    let (scales_in, sizes_in) = if let Some(s) = &attr_scales {
        (Some(s.clone()), None)
    } else if legacy {
        let s = c
            .static_input(1, "scales")?
            .ok_or_else(|| Error::invalid("a scales input is required"))?;
        (Some(s.as_f32()), None)
    } else {
        let s = c
            .static_input(2, "Resize scales")?
            .filter(|t| !t.is_empty());
        let z = c.static_input(3, "Resize sizes")?.filter(|t| !t.is_empty());
        match (s, z) {
            (Some(s), None) => (Some(s.as_f32()), None),
            (None, Some(z)) => (None, Some(z.as_i64())),
            (Some(_), Some(_)) => return Err(Error::invalid("Resize with both scales and sizes")),
            (None, None) => return Err(Error::invalid("Resize needs scales or sizes")),
        }
    };
    let given = scales_in
        .as_ref()
        .map(Vec::len)
        .or(sizes_in.as_ref().map(Vec::len))
        .unwrap_or(0);
    if given != axes.len() {
        return Err(Error::invalid(format!(
            "{given} scales or sizes for {} axes",
            axes.len()
        )));
    }
    let mut scales = vec![1.0f64; r];
    let mut out = x.dims.clone();
    if let Some(s) = &scales_in {
        for (k, &a) in axes.iter().enumerate() {
            if !s[k].is_finite() || s[k] <= 0.0 {
                return Err(Error::invalid(format!("scale {} on axis {a}", s[k])));
            }
            scales[a] = s[k] as f64;
            out[a] = (s[k] as f64 * x.dims[a] as f64) as usize;
        }
    }
    if let Some(z) = &sizes_in {
        for (k, &a) in axes.iter().enumerate() {
            if z[k] < 1 {
                return Err(Error::invalid(format!("size {} on axis {a}", z[k])));
            }
            scales[a] = z[k] as f64 / x.dims[a] as f64;
            out[a] = z[k] as usize;
        }
        if keep_aspect != "stretch" {
            let it = axes.iter().map(|&a| scales[a]);
            let s = match keep_aspect.as_str() {
                "not_larger" => it.fold(f64::INFINITY, f64::min),
                "not_smaller" => it.fold(0.0, f64::max),
                other => {
                    return Err(Error::invalid(format!(
                        "keep_aspect_ratio_policy \"{other}\""
                    )))
                }
            };
            for &a in &axes {
                scales[a] = s;
                out[a] = (s * x.dims[a] as f64 + 0.5) as usize;
            }
        }
    }
    // The region of interest, read only by tf_crop_and_resize: starts then ends, for every
    // axis or for `axes`.
    let roi = if coords == "tf_crop_and_resize" {
        let v = c
            .static_input(1, "Resize roi")?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::invalid("tf_crop_and_resize needs a roi input"))?
            .as_f32();
        if v.len() != 2 * axes.len() {
            return Err(Error::invalid(format!(
                "roi of {} values for {} axes",
                v.len(),
                axes.len()
            )));
        }
        let mut full = vec![(0.0, 1.0); r];
        for (k, &a) in axes.iter().enumerate() {
            full[a] = (v[k] as f64, v[k + axes.len()] as f64);
        }
        Some(full)
    } else {
        None
    };
    if let Some(b) = x.batch {
        let cropped = roi.as_ref().is_some_and(|q| q[b] != (0.0, 1.0));
        if scales[b] != 1.0 || out[b] != x.dims[b] || cropped {
            return Err(Error::unsupported("Resize along the batch axis"));
        }
    }
    if out.contains(&0) {
        return Err(Error::invalid(format!(
            "Resize of {x} to an empty shape {out:?}"
        )));
    }
    Ok(Built::Op(Op::Resize(ResizeAttrs {
        upsample,
        interp,
        coords,
        roi,
        extrapolation: c.attrs.float("extrapolation_value", 0.0),
        antialias,
        exclude_outside,
        keep_aspect,
        axes: axes_attr,
        attr_scales,
        scales,
        out,
    })))
}

/// Pad: pads and mode as attributes before opset 11, as constant inputs from 11 (with the
/// optional constant value, and from 18 the optional axes the pads apply to).
fn pad(c: &NodeCtx) -> Result<Built> {
    let rank = c.shape(0)?.rank();
    let (mut pads, value) = if c.opset < 11 {
        let p = c
            .attrs
            .ints("pads")
            .ok_or_else(|| Error::invalid("attribute 'pads' is required"))?;
        (p, c.attrs.float("value", 0.0))
    } else {
        let p = c
            .static_input(1, "Pad pads")?
            .ok_or_else(|| Error::invalid("Pad needs a pads input"))?
            .as_i64();
        let v = scalar(
            c.static_input(2, "Pad constant_value")?,
            "Pad constant_value",
        )?;
        (p, v.unwrap_or(0.0))
    };
    if let Some(axes) = c.static_input(3, "Pad axes")? {
        let axes = axes.as_i64();
        if pads.len() != 2 * axes.len() {
            return Err(Error::invalid(format!(
                "{} pads for {} axes (expected two per axis)",
                pads.len(),
                axes.len()
            )));
        }
        let mut full = vec![0; 2 * rank];
        for (k, &a) in axes.iter().enumerate() {
            let a = crate::ir::norm_axis(a, rank)?;
            full[a] = pads[k];
            full[a + rank] = pads[k + axes.len()];
        }
        pads = full;
    }
    if pads.len() != 2 * rank {
        return Err(Error::invalid(format!(
            "{} pads for a rank-{rank} input (expected {})",
            pads.len(),
            2 * rank
        )));
    }
    let mode = match c.attrs.string("mode", "constant").as_str() {
        "constant" => PadMode::Constant(value),
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" if c.opset >= 19 => PadMode::Wrap,
        other => {
            return Err(Error::invalid(format!(
                "mode \"{other}\" (expected constant, reflect, edge{})",
                if c.opset >= 19 { " or wrap" } else { "" }
            )))
        }
    };
    Ok(Built::Op(Op::Pad { pads, mode }))
}

/// Slice: starts, ends, axes (and from opset 10 steps) as attributes before opset 10, as
/// constant inputs from 10; resolved against the input's static shape (numpy's rules for
/// out-of-range and negative values). The batch axis cannot be sliced.
fn slice(c: &NodeCtx) -> Result<Built> {
    let x = c.shape(0)?;
    let rank = x.rank();
    let get = |i: usize, attr: &str| -> Result<Option<Vec<i64>>> {
        if c.opset < 10 {
            Ok(c.attrs.ints(attr))
        } else {
            Ok(c.static_input(i, &format!("Slice {attr}"))?
                .map(|t| t.as_i64()))
        }
    };
    let starts = get(1, "starts")?.ok_or_else(|| Error::invalid("Slice needs starts"))?;
    let ends = get(2, "ends")?.ok_or_else(|| Error::invalid("Slice needs ends"))?;
    let axes = get(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps =
        if c.opset < 10 { None } else { get(4, "steps")? }.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(Error::invalid(format!(
            "Slice with {} starts, {} ends, {} axes, {} steps (expected as many of each)",
            starts.len(),
            ends.len(),
            axes.len(),
            steps.len()
        )));
    }
    let mut out = (vec![], vec![], vec![], vec![]);
    for k in 0..starts.len() {
        let a = crate::ir::norm_axis(axes[k], rank)?;
        if out.0.contains(&a) {
            return Err(Error::invalid(format!("Slice axis {a} given twice")));
        }
        let (d, step) = (x.dims[a] as i64, steps[k]);
        if step == 0 {
            return Err(Error::invalid("Slice step 0"));
        }
        let clamp = |v: i64, lo: i64, hi: i64| {
            let v = if v < 0 { v + d } else { v };
            v.clamp(lo, hi)
        };
        let (start, end) = if step > 0 {
            (clamp(starts[k], 0, d), clamp(ends[k], 0, d))
        } else {
            (clamp(starts[k], 0, d - 1), clamp(ends[k], -1, d - 1))
        };
        let len = if step > 0 {
            (end - start + step - 1).max(0) / step
        } else {
            (start - end - step - 1).max(0) / -step
        };
        let whole = start == 0 && step == 1 && len == d;
        if x.batch == Some(a) && !whole {
            return Err(Error::unsupported(format!(
                "Slice along the batch axis {a}"
            )));
        }
        if len == 0 {
            return Err(Error::unsupported(format!(
                "Slice that leaves axis {a} empty"
            )));
        }
        out.0.push(a);
        out.1.push(start as usize);
        out.2.push(step);
        out.3.push(len as usize);
    }
    Ok(Built::Op(Op::Slice {
        axes: out.0,
        starts: out.1,
        steps: out.2,
        lens: out.3,
    }))
}

fn reshape(c: &NodeCtx) -> Result<Built> {
    let shape = c
        .static_input(1, "the Reshape target")?
        .ok_or_else(|| Error::invalid("Reshape needs a target shape input"))?
        .as_i64();
    if c.attrs.int("allowzero", 0) != 0 && shape.contains(&0) {
        return Err(Error::unsupported(
            "Reshape with allowzero=1 and a zero in the target",
        ));
    }
    Ok(Built::Op(Op::Reshape { shape }))
}

fn transpose(c: &NodeCtx) -> Result<Built> {
    let x = c.shape(0)?;
    let perm = match c.attrs.ints("perm") {
        Some(p) => p
            .into_iter()
            .map(|v| {
                usize::try_from(v).map_err(|_| Error::invalid(format!("attribute 'perm' has {v}")))
            })
            .collect::<Result<Vec<_>>>()?,
        None => (0..x.rank()).rev().collect(),
    };
    Ok(Built::Op(Op::Transpose { perm }))
}

fn concat(c: &NodeCtx) -> Result<Built> {
    if !c.attrs.has("axis") && c.opset >= 4 {
        return Err(Error::invalid("attribute 'axis' is required"));
    }
    Ok(Built::Op(Op::Concat {
        axis: c.attrs.int("axis", 1),
    }))
}

fn axes_op(c: &NodeCtx, squeeze: bool) -> Result<Built> {
    let axes = if c.opset < 13 {
        c.attrs.ints("axes").unwrap_or_default()
    } else {
        c.static_input(1, "axes")?
            .map(Constant::as_i64)
            .unwrap_or_default()
    };
    if !squeeze && axes.is_empty() {
        return Err(Error::invalid("Unsqueeze needs axes"));
    }
    Ok(Built::Op(if squeeze {
        Op::Squeeze { axes }
    } else {
        Op::Unsqueeze { axes }
    }))
}

fn lrn(c: &NodeCtx) -> Result<Built> {
    let size = c.attrs.int("size", 0);
    if !(1..=1024).contains(&size) {
        return Err(Error::invalid(format!("attribute 'size' is {size}")));
    }
    Ok(Built::Op(Op::Lrn {
        alpha: c.attrs.float("alpha", 1e-4),
        beta: c.attrs.float("beta", 0.75),
        bias: c.attrs.float("bias", 1.0),
        size: size as usize,
    }))
}

/// Gather: folded over constants other than float initializers; otherwise a node, with
/// constant indices.
fn gather(c: &NodeCtx) -> Result<Built> {
    // Over constants it folds (shape arithmetic), but not over a float initializer: that is
    // a parameter, and its gathered elements must stay tied to it (the EC graph's V's).
    if c.all_const() && !c.is_param(0) {
        return fold::gather(c);
    }
    let x = c.shape(0)?;
    let idx = c
        .static_input(1, "Gather's indices")?
        .ok_or_else(|| Error::invalid("Gather needs indices"))?;
    if x.rank() == 0 {
        return Err(Error::invalid("Gather of a scalar"));
    }
    let axis = crate::ir::norm_axis(c.attrs.int("axis", 0), x.rank())?;
    let len = x.dims[axis] as i64;
    let indices = idx
        .as_i64()
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len } else { i };
            if (0..len).contains(&j) {
                Ok(j as usize)
            } else {
                Err(Error::invalid(format!(
                    "Gather index {i} out of range for length {len}"
                )))
            }
        })
        .collect::<Result<_>>()?;
    Ok(Built::Op(Op::Gather {
        axis,
        indices,
        idx_dims: idx.dims.clone(),
    }))
}

/// ScatterND without reduction, constant indices in range and none repeated (ONNX leaves
/// repeated indices undefined without a reduction; ecc refuses them).
fn scatter_nd(c: &NodeCtx) -> Result<Built> {
    let reduction = c.attrs.string("reduction", "none");
    if reduction != "none" {
        return Err(Error::unsupported(format!(
            "ScatterND with reduction '{reduction}' (ecc reads 'none')"
        )));
    }
    let x = c.shape(0)?;
    let idx = c
        .static_input(1, "ScatterND's indices")?
        .ok_or_else(|| Error::invalid("ScatterND needs indices"))?;
    let k = *idx
        .dims
        .last()
        .ok_or_else(|| Error::invalid("ScatterND indices must have rank >= 1"))?;
    if k == 0 || k > x.rank() {
        return Err(Error::invalid(format!(
            "ScatterND index tuples of {k} entries for data of rank {}",
            x.rank()
        )));
    }
    let mut indices = Vec::with_capacity(idx.len());
    for (n, &i) in idx.as_i64().iter().enumerate() {
        let len = x.dims[n % k] as i64;
        let j = if i < 0 { i + len } else { i };
        if !(0..len).contains(&j) {
            return Err(Error::invalid(format!(
                "ScatterND index {i} out of range for length {len}"
            )));
        }
        indices.push(j as usize);
    }
    let mut seen = std::collections::HashSet::new();
    for t in indices.chunks(k) {
        if !seen.insert(t) {
            return Err(Error::unsupported(format!(
                "ScatterND with the index {t:?} repeated (undefined without a reduction)"
            )));
        }
    }
    Ok(Built::Op(Op::ScatterNd {
        indices,
        idx_dims: idx.dims.clone(),
    }))
}
