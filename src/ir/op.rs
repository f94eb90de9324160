//! The op set of the IR: one variant per supported ONNX op, attributes typed and with
//! opset-dependent defaults already resolved by the importer.

/// Add, Sub, Mul, Div.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

/// Convolution attributes, with `auto_pad` already resolved into explicit pads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// ONNX order: all begins, then all ends.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
}

/// ConvTranspose attributes, with `output_shape`, `output_padding` and `auto_pad` resolved
/// into pads: along each spatial axis the output has (in - 1) stride + (kernel - 1) dilation
/// plus 1 - begin - end elements, output position o receiving x[i] w[k] where
/// o = i stride + k dilation - begin. Begins are never negative; an end is negative where the
/// output extends past the full result (`output_padding`, or a larger `output_shape`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvTransposeAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// ONNX order: all begins, then all ends.
    pub pads: Vec<i64>,
    pub dilations: Vec<usize>,
    pub group: usize,
}

/// How Resize computes an output element from the input positions near its source
/// coordinate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Interp {
    /// `nearest_mode`: round_prefer_floor, round_prefer_ceil, floor, ceil.
    Nearest(NearestMode),
    Linear,
    /// Keys' cubic with coefficient `a` (`cubic_coeff_a`).
    Cubic(f32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// Resize and Upsample, with their operands resolved: along each axis of the input, the
/// output length and the scale the source coordinates are computed with (out / in where the
/// model gave sizes). Separable: each axis is interpolated in turn, as the ONNX reference does.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeAttrs {
    /// Written as Upsample (opsets 7-9) rather than Resize.
    pub upsample: bool,
    pub interp: Interp,
    /// `coordinate_transformation_mode`: half_pixel, half_pixel_symmetric,
    /// pytorch_half_pixel, align_corners, asymmetric, tf_crop_and_resize, or (opset 11)
    /// tf_half_pixel_for_nn.
    pub coords: String,
    /// tf_crop_and_resize: the region of interest per input axis (start, end, as fractions
    /// of the input), and the value of outputs whose source lies outside the input.
    pub roi: Option<Vec<(f64, f64)>>,
    pub extrapolation: f32,
    pub antialias: bool,
    pub exclude_outside: bool,
    /// Attributes kept as read, for export: `keep_aspect_ratio_policy` and `axes`.
    pub keep_aspect: String,
    pub axes: Option<Vec<i64>>,
    /// Upsample's `scales` attribute (before opset 9), written back as such.
    pub attr_scales: Option<Vec<f32>>,
    /// Per input axis.
    pub scales: Vec<f64>,
    pub out: Vec<usize>,
}

/// Pooling window attributes, with `auto_pad` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub ceil_mode: bool,
}

/// How Pad fills what it adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    Constant(f32),
    Reflect,
    Edge,
    Wrap,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    /// `legacy_axis`: opset < 7 broadcasting (`broadcast=1`, `axis`), where B is aligned to
    /// A starting at that axis rather than at the trailing end.
    Binary {
        kind: BinaryKind,
        legacy_axis: Option<usize>,
    },
    Sum,
    /// Elementwise maximum, minimum and mean of one or more inputs (with broadcasting).
    Max,
    Min,
    Mean,
    Conv(ConvAttrs),
    Resize(ResizeAttrs),
    /// Weight (C_in, C_out / group, kernel...): the adjoint of a Conv with that weight.
    ConvTranspose(ConvTransposeAttrs),
    MaxPool(PoolAttrs),
    AveragePool {
        pool: PoolAttrs,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    GlobalMaxPool,
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    PRelu,
    Clip {
        min: f32,
        max: f32,
    },
    Sigmoid,
    Tanh,
    /// max(0, min(1, alpha x + beta)).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// x · max(0, min(1, x / 6 + 1/2)).
    HardSwish,
    /// x Φ(x), Φ the standard normal CDF (`approximate = "none"`), or its tanh
    /// approximation (`"tanh"`).
    Gelu {
        tanh: bool,
    },
    /// `legacy`: opset < 13, where the input is coerced to 2-D at `axis`.
    Softmax {
        axis: i64,
        legacy: bool,
    },
    LogSoftmax {
        axis: i64,
        legacy: bool,
    },
    /// Inputs X, scale, B, running mean, running var. The executor's mode decides the
    /// form: inference (the running statistics) or training (batch statistics, running ones
    /// updated with `momentum`: running = running * momentum + batch * (1 - momentum)).
    BatchNorm {
        epsilon: f32,
        momentum: f32,
    },
    /// Inputs X, scale, B: per sample and channel, (x - mean) / sqrt(var + epsilon) over
    /// the spatial axes (biased variance), then scale and B per channel.
    InstanceNorm {
        epsilon: f32,
    },
    /// Identity in inference; in training, zeroes each element with probability `ratio`
    /// and scales the rest by 1 / (1 - ratio).
    Dropout {
        ratio: f32,
    },
    Identity,
    Flatten {
        axis: i64,
    },
    /// The target as written (0 copies, -1 infers); the static output shape is in the
    /// graph's shape table.
    Reshape {
        shape: Vec<i64>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: i64,
    },
    Squeeze {
        axes: Vec<i64>,
    },
    /// `pads`: for every axis, begins then ends (ONNX order); negative values crop.
    Pad {
        pads: Vec<i64>,
        mode: PadMode,
    },
    /// Per sliced axis (never the batch axis): the first index, the step and the number of
    /// elements taken, resolved against the input's static shape at import.
    Slice {
        axes: Vec<usize>,
        starts: Vec<usize>,
        steps: Vec<i64>,
        lens: Vec<usize>,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    Lrn {
        alpha: f32,
        beta: f32,
        bias: f32,
        size: usize,
    },
    /// Gather of data computed at run time with constant indices (Gather over constants
    /// folds at import): `indices` in 0..dims[axis], of shape `idx_dims`; the output has
    /// dims[..axis] + idx_dims + dims[axis + 1..]. Never along the batch axis.
    Gather {
        axis: usize,
        indices: Vec<usize>,
        idx_dims: Vec<usize>,
    },
    /// ScatterND without reduction and with constant indices, none repeated: the data with
    /// the elements (or slices) at `indices` (k-tuples, `idx_dims` = [.., k], in range)
    /// replaced by `updates`. Data without a batch axis (ecc uses it on parameters: the EC
    /// graph's fixed scalars, `ec::graph`). The IR's inputs are data, updates, indices
    /// (static operands last); ONNX's order is data, indices, updates, which import and
    /// export translate.
    ScatterNd {
        indices: Vec<usize>,
        idx_dims: Vec<usize>,
    },
}

impl Op {
    /// The ONNX op type this op is written as.
    pub fn onnx_name(&self) -> &'static str {
        match self {
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Binary { kind, .. } => match kind {
                BinaryKind::Add => "Add",
                BinaryKind::Sub => "Sub",
                BinaryKind::Mul => "Mul",
                BinaryKind::Div => "Div",
            },
            Op::Sum => "Sum",
            Op::Max => "Max",
            Op::Min => "Min",
            Op::Mean => "Mean",
            Op::Conv(_) => "Conv",
            Op::Resize(r) if r.upsample => "Upsample",
            Op::Resize(_) => "Resize",
            Op::ConvTranspose(_) => "ConvTranspose",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool { .. } => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Relu => "Relu",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::PRelu => "PRelu",
            Op::Clip { .. } => "Clip",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::HardSwish => "HardSwish",
            Op::Gelu { .. } => "Gelu",
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Dropout { .. } => "Dropout",
            Op::InstanceNorm { .. } => "InstanceNormalization",
            Op::Identity => "Identity",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Pad { .. } => "Pad",
            Op::Slice { .. } => "Slice",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Lrn { .. } => "LRN",
            Op::Gather { .. } => "Gather",
            Op::ScatterNd { .. } => "ScatterND",
        }
    }

    /// How many of a node's `n` inputs are data (read at run time); the rest are static
    /// operands whose values the op carries.
    pub fn data_inputs(&self, n: usize) -> usize {
        match self {
            Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Pad { .. }
            | Op::Slice { .. }
            | Op::Resize(_)
            | Op::Clip { .. }
            | Op::Dropout { .. }
            | Op::Gather { .. } => 1.min(n),
            Op::ScatterNd { .. } => 2.min(n),
            _ => n,
        }
    }
}
