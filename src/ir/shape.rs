//! Static shapes and shape inference. Shapes are concrete, computed with a nominal batch
//! size; `batch` marks the axis that holds the (symbolic) batch so that the executor can run
//! any batch size.

use super::op::Op;
use crate::error::{Error, Result};
use std::fmt;

/// Largest number of elements ecc accepts in one tensor (1 GiB of f32; vgg19's largest
/// weight has 103M): anything larger in a model file is taken as corrupt, not allocated.
pub const MAX_ELEMENTS: usize = 1 << 28;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub dims: Vec<usize>,
    /// The axis holding the batch, if any.
    pub batch: Option<usize>,
}

impl Shape {
    pub fn fixed(dims: Vec<usize>) -> Self {
        Shape { dims, batch: None }
    }
    pub fn batched(dims: Vec<usize>, axis: usize) -> Self {
        Shape {
            dims,
            batch: Some(axis),
        }
    }
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// The dims with the batch axis set to `batch`.
    pub fn with_batch(&self, batch: usize) -> Vec<usize> {
        let mut d = self.dims.clone();
        if let Some(a) = self.batch {
            d[a] = batch;
        }
        d
    }
    /// Reject zero-sized and absurd shapes.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.dims.contains(&0) {
            return Err(Error::shape(format!(
                "{what} has a zero-sized dimension: {self}"
            )));
        }
        let mut n: usize = 1;
        for &d in &self.dims {
            n = n.saturating_mul(d);
        }
        if n > MAX_ELEMENTS {
            return Err(Error::shape(format!(
                "{what} has an absurd size {self} ({n} elements, limit {MAX_ELEMENTS})"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if Some(i) == self.batch {
                    "N".to_string()
                } else {
                    d.to_string()
                }
            })
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// Normalize a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(Error::shape(format!(
            "axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

/// Output length of a conv or pooling window along one axis.
/// The output length of a transposed convolution along one axis (see
/// [`crate::ir::ConvTransposeAttrs`]): stride (len - 1) + dilation (kernel - 1) + 1 - pads.
pub fn conv_transpose_out_len(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: i64,
    pad_end: i64,
) -> Result<usize> {
    let full = (stride * (len.max(1) - 1) + dilation * (kernel.max(1) - 1) + 1) as i64;
    let out = full - pad_begin - pad_end;
    if len == 0 || out < 1 || pad_begin < 0 {
        return Err(Error::shape(format!(
            "transposed window (kernel {kernel}, stride {stride}, dilation {dilation}) over input length {len} with pads {pad_begin}+{pad_end} leaves no output"
        )));
    }
    Ok(out as usize)
}

pub fn conv_out_len(
    len: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Result<usize> {
    let eff = dilation * (kernel.max(1) - 1) + 1;
    let padded = len + pad_begin + pad_end;
    if padded < eff || stride == 0 {
        return Err(Error::shape(format!(
            "window of {eff} (kernel {kernel}, dilation {dilation}) does not fit input length {len} with pads {pad_begin}+{pad_end}"
        )));
    }
    let span = padded - eff;
    let mut out = if ceil_mode {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    // As in PyTorch and onnxruntime: the last window must start inside the input or its
    // leading padding.
    if ceil_mode && (out - 1) * stride >= len + pad_begin {
        out -= 1;
    }
    Ok(out)
}

/// Multidirectional (numpy) broadcasting of two shapes; the batch axis follows the
/// operand that has one.
fn broadcast(a: &Shape, b: &Shape) -> Result<Shape> {
    let r = a.rank().max(b.rank());
    let mut dims = vec![0; r];
    for (i, d) in dims.iter_mut().enumerate() {
        let da = if i + a.rank() >= r {
            a.dims[i + a.rank() - r]
        } else {
            1
        };
        let db = if i + b.rank() >= r {
            b.dims[i + b.rank() - r]
        } else {
            1
        };
        *d = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(format!("cannot broadcast {a} with {b}")));
        };
    }
    let batch = a
        .batch
        .map(|x| x + r - a.rank())
        .or(b.batch.map(|x| x + r - b.rank()));
    Ok(Shape { dims, batch })
}

fn spatial_out(
    x: &Shape,
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    ceil: bool,
    channels: usize,
) -> Result<Shape> {
    let ns = kernel.len();
    if x.rank() != ns + 2 {
        return Err(Error::shape(format!(
            "input {x} has rank {}, a {ns}-D window needs rank {}",
            x.rank(),
            ns + 2
        )));
    }
    let mut dims = vec![x.dims[0], channels];
    for i in 0..ns {
        dims.push(conv_out_len(
            x.dims[2 + i],
            kernel[i],
            strides[i],
            pads[i],
            pads[ns + i],
            dilations[i],
            ceil,
        )?);
    }
    Ok(Shape {
        dims,
        batch: x.batch,
    })
}

fn same_rank(a: &Shape, b: &Shape, what: &str) -> Result<()> {
    if a.rank() != b.rank() {
        return Err(Error::shape(format!("{what}: {a} and {b} differ in rank")));
    }
    Ok(())
}

/// Output shape of Reshape for a given target (0 copies the input dim, -1 is inferred).
pub fn reshape_dims(input: &Shape, target: &[i64]) -> Result<Shape> {
    let total = input.numel();
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 => dims.push(*input.dims.get(i).ok_or_else(|| {
                Error::shape(format!(
                    "target {target:?} copies axis {i}, input {input} lacks it"
                ))
            })?),
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            t if t > 0 => dims.push(t as usize),
            _ => return Err(Error::shape(format!("invalid reshape target {target:?}"))),
        }
    }
    let known = dims
        .iter()
        .try_fold(1usize, |a, &d| {
            a.checked_mul(d).filter(|&n| n <= MAX_ELEMENTS)
        })
        .ok_or_else(|| Error::shape(format!("reshape target {target:?} is absurdly large")))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(Error::shape(format!(
                "cannot reshape {input} to {target:?}"
            )));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(Error::shape(format!(
            "cannot reshape {input} ({total} elements) to {target:?}"
        )));
    }
    // The batch survives when the leading axis is kept whole and nothing else mixes with it.
    let batch = match input.batch {
        Some(0) if !dims.is_empty() && dims[0] == input.dims[0] => Some(0),
        _ => None,
    };
    Ok(Shape { dims, batch })
}

impl Op {
    /// Shape inference: output shapes from data-input shapes. Static operands are already
    /// in the op's attributes.
    pub fn infer(&self, ins: &[&Shape]) -> Result<Vec<Shape>> {
        let need = |n: usize| -> Result<()> {
            if ins.len() < n {
                Err(Error::invalid(format!(
                    "needs {n} inputs, has {}",
                    ins.len()
                )))
            } else {
                Ok(())
            }
        };
        let out = match self {
            Op::Gemm {
                trans_a, trans_b, ..
            } => {
                need(2)?;
                let (a, b) = (ins[0], ins[1]);
                if a.rank() != 2 || b.rank() != 2 {
                    return Err(Error::shape(format!(
                        "Gemm needs 2-D A and B, got {a} and {b}"
                    )));
                }
                let (m, ka) = if *trans_a {
                    (a.dims[1], a.dims[0])
                } else {
                    (a.dims[0], a.dims[1])
                };
                let (kb, n) = if *trans_b {
                    (b.dims[1], b.dims[0])
                } else {
                    (b.dims[0], b.dims[1])
                };
                if ka != kb {
                    return Err(Error::shape(format!(
                        "Gemm inner dimensions differ: A {a}, B {b}"
                    )));
                }
                let y = Shape {
                    dims: vec![m, n],
                    batch: if a.batch == Some(if *trans_a { 1 } else { 0 }) {
                        Some(0)
                    } else {
                        None
                    },
                };
                if let Some(c) = ins.get(2) {
                    broadcast(&y, c).and_then(|s| {
                        if s.dims == y.dims {
                            Ok(())
                        } else {
                            Err(Error::shape(format!(
                                "Gemm bias {c} does not broadcast to {y}"
                            )))
                        }
                    })?;
                }
                y
            }
            Op::MatMul => {
                need(2)?;
                let (a, b) = (ins[0], ins[1]);
                if a.rank() == 0 || b.rank() == 0 {
                    return Err(Error::shape("MatMul of a scalar"));
                }
                let a2 = if a.rank() == 1 {
                    Shape::fixed(vec![1, a.dims[0]])
                } else {
                    a.clone()
                };
                let b2 = if b.rank() == 1 {
                    Shape::fixed(vec![b.dims[0], 1])
                } else {
                    b.clone()
                };
                let (ra, rb) = (a2.rank(), b2.rank());
                if a2.dims[ra - 1] != b2.dims[rb - 2] {
                    return Err(Error::shape(format!(
                        "MatMul inner dimensions differ: {a} x {b}"
                    )));
                }
                let ba = Shape {
                    dims: a2.dims[..ra - 2].to_vec(),
                    batch: a2.batch.filter(|&x| x < ra - 2),
                };
                let bb = Shape {
                    dims: b2.dims[..rb - 2].to_vec(),
                    batch: b2.batch.filter(|&x| x < rb - 2),
                };
                let mut s = broadcast(&ba, &bb)?;
                let lead = s.rank();
                if a.rank() > 1 {
                    s.dims.push(a2.dims[ra - 2]);
                    if a2.batch == Some(ra - 2) {
                        s.batch = Some(lead);
                    }
                }
                if b.rank() > 1 {
                    s.dims.push(b2.dims[rb - 1]);
                }
                s
            }
            Op::Binary {
                kind: _,
                legacy_axis,
            } => {
                need(2)?;
                let (a, b) = (ins[0], ins[1]);
                match legacy_axis {
                    Some(axis) => {
                        // B's dims must match A's from `axis` on (or be 1).
                        let ok = axis + b.rank() <= a.rank()
                            && b.dims
                                .iter()
                                .enumerate()
                                .all(|(i, &d)| d == 1 || d == a.dims[axis + i]);
                        if !ok {
                            return Err(Error::shape(format!(
                                "legacy broadcast of {b} into {a} at axis {axis}"
                            )));
                        }
                        a.clone()
                    }
                    None => broadcast(a, b)?,
                }
            }
            Op::Sum | Op::Max | Op::Min | Op::Mean => {
                need(1)?;
                let mut s = ins[0].clone();
                for b in &ins[1..] {
                    s = broadcast(&s, b)?;
                }
                s
            }
            Op::Conv(c) => {
                need(2)?;
                let (x, w) = (ins[0], ins[1]);
                same_rank(x, w, "Conv input and weight")?;
                let ns = c.kernel.len();
                if x.rank() != ns + 2 {
                    return Err(Error::shape(format!("Conv input {x} for a {ns}-D kernel")));
                }
                if c.group == 0 || x.dims[1] != w.dims[1] * c.group || w.dims[0] % c.group != 0 {
                    return Err(Error::shape(format!(
                        "Conv input {x} has {} channels, weight {w} with group {} expects {}",
                        x.dims[1],
                        c.group,
                        w.dims[1] * c.group
                    )));
                }
                if w.dims[2..] != c.kernel[..] {
                    return Err(Error::shape(format!(
                        "Conv weight {w} vs kernel_shape {:?}",
                        c.kernel
                    )));
                }
                if let Some(b) = ins.get(2) {
                    if b.dims != [w.dims[0]] {
                        return Err(Error::shape(format!(
                            "Conv bias {b} for {} output channels",
                            w.dims[0]
                        )));
                    }
                }
                spatial_out(
                    x,
                    &c.kernel,
                    &c.strides,
                    &c.pads,
                    &c.dilations,
                    false,
                    w.dims[0],
                )?
            }
            Op::ConvTranspose(c) => {
                need(2)?;
                let (x, w) = (ins[0], ins[1]);
                same_rank(x, w, "ConvTranspose input and weight")?;
                let ns = c.kernel.len();
                if x.rank() != ns + 2 {
                    return Err(Error::shape(format!(
                        "ConvTranspose input {x} for a {ns}-D kernel"
                    )));
                }
                if c.group == 0 || x.dims[1] != w.dims[0] || w.dims[0] % c.group != 0 {
                    return Err(Error::shape(format!(
                        "ConvTranspose input {x} has {} channels, weight {w} with group {} reads {}",
                        x.dims[1], c.group, w.dims[0]
                    )));
                }
                if w.dims[2..] != c.kernel[..] {
                    return Err(Error::shape(format!(
                        "ConvTranspose weight {w} vs kernel_shape {:?}",
                        c.kernel
                    )));
                }
                let m = w.dims[1] * c.group;
                if let Some(b) = ins.get(2) {
                    if b.dims != [m] {
                        return Err(Error::shape(format!(
                            "ConvTranspose bias {b} for {m} output channels"
                        )));
                    }
                }
                let mut dims = vec![x.dims[0], m];
                for i in 0..ns {
                    dims.push(conv_transpose_out_len(
                        x.dims[2 + i],
                        c.kernel[i],
                        c.strides[i],
                        c.dilations[i],
                        c.pads[i],
                        c.pads[ns + i],
                    )?);
                }
                Shape {
                    dims,
                    batch: x.batch,
                }
            }
            Op::MaxPool(p) | Op::AveragePool { pool: p, .. } => {
                need(1)?;
                let x = ins[0];
                if x.rank() < 3 {
                    return Err(Error::shape(format!("pooling input {x} needs rank >= 3")));
                }
                spatial_out(
                    x,
                    &p.kernel,
                    &p.strides,
                    &p.pads,
                    &p.dilations,
                    p.ceil_mode,
                    x.dims[1],
                )?
            }
            Op::GlobalAveragePool | Op::GlobalMaxPool => {
                need(1)?;
                let x = ins[0];
                if x.rank() < 3 {
                    return Err(Error::shape(format!(
                        "global pooling input {x} needs rank >= 3"
                    )));
                }
                let mut d = x.dims.clone();
                for v in d.iter_mut().skip(2) {
                    *v = 1;
                }
                Shape {
                    dims: d,
                    batch: x.batch,
                }
            }
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Clip { .. }
            | Op::Sigmoid
            | Op::Tanh
            | Op::HardSigmoid { .. }
            | Op::HardSwish
            | Op::Gelu { .. }
            | Op::InstanceNorm { .. }
            | Op::Dropout { .. }
            | Op::Identity => {
                need(1)?;
                ins[0].clone()
            }
            Op::PRelu => {
                need(2)?;
                let (x, s) = (ins[0], ins[1]);
                // A 1-D slope of C values is per channel (axis 1), as old exporters wrote it.
                let per_channel = s.rank() == 1 && x.rank() > 2 && s.dims[0] == x.dims[1];
                if !per_channel && broadcast(x, s)?.dims != x.dims {
                    return Err(Error::shape(format!(
                        "PRelu slope {s} does not broadcast to {x}"
                    )));
                }
                x.clone()
            }
            Op::Softmax { axis, .. } | Op::LogSoftmax { axis, .. } => {
                need(1)?;
                norm_axis(*axis, ins[0].rank())?;
                ins[0].clone()
            }
            Op::BatchNorm { .. } => {
                need(5)?;
                let x = ins[0];
                if x.rank() < 2 {
                    return Err(Error::shape(format!(
                        "BatchNormalization input {x} needs rank >= 2"
                    )));
                }
                for (i, p) in ins[1..5].iter().enumerate() {
                    if p.numel() != x.dims[1] {
                        return Err(Error::shape(format!(
                            "BatchNormalization input {} is {p}, expected {} channels",
                            i + 1,
                            x.dims[1]
                        )));
                    }
                }
                x.clone()
            }
            Op::Flatten { axis } => {
                need(1)?;
                let x = ins[0];
                let r = x.rank() as i64;
                let a = if *axis < 0 { axis + r } else { *axis };
                if a < 0 || a > r {
                    return Err(Error::shape(format!("Flatten axis {axis} for rank {r}")));
                }
                let a = a as usize;
                let outer: usize = x.dims[..a].iter().product();
                let inner: usize = x.dims[a..].iter().product();
                let batch = if x.batch == Some(0) && a >= 1 && outer == x.dims[0] {
                    Some(0)
                } else {
                    None
                };
                Shape {
                    dims: vec![outer, inner],
                    batch,
                }
            }
            Op::Reshape { shape } => {
                need(1)?;
                reshape_dims(ins[0], shape)?
            }
            Op::Transpose { perm } => {
                need(1)?;
                let x = ins[0];
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..x.rank()).collect::<Vec<_>>() {
                    return Err(Error::shape(format!(
                        "Transpose perm {perm:?} for input {x}"
                    )));
                }
                Shape {
                    dims: perm.iter().map(|&p| x.dims[p]).collect(),
                    batch: x.batch.and_then(|b| perm.iter().position(|&p| p == b)),
                }
            }
            Op::Concat { axis } => {
                need(1)?;
                let x = ins[0];
                let a = norm_axis(*axis, x.rank())?;
                let mut dims = x.dims.clone();
                dims[a] = 0;
                for s in ins {
                    same_rank(x, s, "Concat inputs")?;
                    for i in 0..x.rank() {
                        if i != a && s.dims[i] != x.dims[i] {
                            return Err(Error::shape(format!(
                                "Concat inputs {x} and {s} differ off axis {a}"
                            )));
                        }
                    }
                    dims[a] += s.dims[a];
                }
                Shape {
                    dims,
                    batch: x.batch.filter(|&b| b != a),
                }
            }
            Op::Pad { pads, mode } => {
                need(1)?;
                let x = ins[0];
                let r = x.rank();
                let mut dims = x.dims.clone();
                for (a, d) in dims.iter_mut().enumerate() {
                    let (b, e) = (pads[a], pads[a + r]);
                    let n = *d as i64 + b + e;
                    if n < 1 {
                        return Err(Error::shape(format!(
                            "Pad {b}, {e} leaves axis {a} of {x} empty"
                        )));
                    }
                    // Reflect, edge and wrap read the cropped axis, which must keep a value.
                    let kept = *d as i64 + b.min(0) + e.min(0);
                    if kept < 1 && !matches!(mode, crate::ir::PadMode::Constant(_)) {
                        return Err(Error::shape(format!(
                            "Pad {b}, {e} on axis {a} of {x} crops it empty before {mode:?} padding"
                        )));
                    }
                    *d = n as usize;
                }
                if x.batch.is_some_and(|b| pads[b] != 0 || pads[b + r] != 0) {
                    return Err(Error::unsupported("Pad along the batch axis"));
                }
                Shape {
                    dims,
                    batch: x.batch,
                }
            }
            Op::Resize(r) => {
                need(1)?;
                let x = ins[0];
                if r.out.len() != x.rank() {
                    return Err(Error::shape(format!(
                        "Resize to {} axes of a rank-{} input {x}",
                        r.out.len(),
                        x.rank()
                    )));
                }
                let mut dims = r.out.clone();
                if let Some(b) = x.batch {
                    dims[b] = x.dims[b];
                }
                Shape {
                    dims,
                    batch: x.batch,
                }
            }
            Op::Slice { axes, lens, .. } => {
                need(1)?;
                let x = ins[0];
                let mut dims = x.dims.clone();
                for (&a, &n) in axes.iter().zip(lens) {
                    if a >= dims.len() {
                        return Err(Error::shape(format!("Slice axis {a} of {x}")));
                    }
                    dims[a] = n;
                }
                Shape {
                    dims,
                    batch: x.batch,
                }
            }
            Op::Squeeze { axes } => {
                need(1)?;
                let x = ins[0];
                let axes: Vec<usize> = if axes.is_empty() {
                    (0..x.rank())
                        .filter(|&i| x.dims[i] == 1 && Some(i) != x.batch)
                        .collect()
                } else {
                    axes.iter()
                        .map(|&a| norm_axis(a, x.rank()))
                        .collect::<Result<_>>()?
                };
                let mut dims = vec![];
                let mut batch = None;
                for i in 0..x.rank() {
                    if axes.contains(&i) {
                        if x.dims[i] != 1 {
                            return Err(Error::shape(format!("Squeeze axis {i} of {x} is not 1")));
                        }
                    } else {
                        if Some(i) == x.batch {
                            batch = Some(dims.len());
                        }
                        dims.push(x.dims[i]);
                    }
                }
                Shape { dims, batch }
            }
            Op::Unsqueeze { axes } => {
                need(1)?;
                let x = ins[0];
                let r = x.rank() + axes.len();
                let axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, r))
                    .collect::<Result<_>>()?;
                let mut dims = vec![];
                let mut batch = None;
                let mut src = 0;
                for i in 0..r {
                    if axes.contains(&i) {
                        dims.push(1);
                    } else {
                        if Some(src) == x.batch {
                            batch = Some(i);
                        }
                        dims.push(
                            *x.dims
                                .get(src)
                                .ok_or_else(|| Error::shape("Unsqueeze axes repeat"))?,
                        );
                        src += 1;
                    }
                }
                Shape { dims, batch }
            }
            Op::Gather {
                axis,
                indices,
                idx_dims,
            } => {
                need(1)?;
                let x = ins[0];
                if x.batch == Some(*axis) {
                    return Err(Error::unsupported(format!(
                        "Gather along the batch axis of {x} (ecc runs any batch size; it gathers along the other axes)"
                    )));
                }
                if *axis >= x.rank() {
                    return Err(Error::shape(format!("Gather along axis {axis} of {x}")));
                }
                if let Some(&i) = indices.iter().find(|&&i| i >= x.dims[*axis]) {
                    return Err(Error::shape(format!(
                        "Gather index {i} out of range for axis {axis} of {x}"
                    )));
                }
                let mut dims = x.dims[..*axis].to_vec();
                dims.extend(idx_dims);
                dims.extend(&x.dims[axis + 1..]);
                let batch = x
                    .batch
                    .map(|b| if b < *axis { b } else { b - 1 + idx_dims.len() });
                Shape { dims, batch }
            }
            Op::ScatterNd { indices, idx_dims } => {
                need(2)?;
                let (x, u) = (ins[0], ins[1]);
                let k = idx_dims.last().copied().unwrap_or(0);
                if x.batch.is_some() || u.batch.is_some() {
                    return Err(Error::unsupported(
                        "ScatterND over values with a batch axis (ecc scatters into parameters)",
                    ));
                }
                let mut want = idx_dims[..idx_dims.len().saturating_sub(1)].to_vec();
                want.extend(x.dims.get(k..).unwrap_or_default());
                if k == 0 || k > x.rank() || u.dims != want {
                    return Err(Error::shape(format!(
                        "ScatterND of updates {u} into {x} with indices {idx_dims:?}"
                    )));
                }
                if let Some((n, _)) = indices
                    .iter()
                    .enumerate()
                    .find(|&(n, &i)| i >= x.dims[n % k])
                {
                    return Err(Error::shape(format!(
                        "ScatterND index {} out of range for {x}",
                        indices[n]
                    )));
                }
                x.clone()
            }
            Op::Lrn { .. } => {
                need(1)?;
                if ins[0].rank() < 3 {
                    return Err(Error::shape(format!(
                        "LRN input {} needs rank >= 3",
                        ins[0]
                    )));
                }
                ins[0].clone()
            }
        };
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_lengths() {
        assert_eq!(conv_out_len(224, 7, 2, 3, 3, 1, false).unwrap(), 112);
        assert_eq!(conv_out_len(5, 2, 2, 0, 0, 1, false).unwrap(), 2);
        assert_eq!(conv_out_len(5, 2, 2, 0, 0, 1, true).unwrap(), 3);
        // ceil mode never starts a window in the trailing padding
        assert_eq!(conv_out_len(4, 2, 2, 1, 1, 1, true).unwrap(), 3);
        assert_eq!(conv_out_len(9, 3, 1, 0, 0, 2, false).unwrap(), 5);
        assert!(conv_out_len(2, 5, 1, 0, 0, 1, false).is_err());
    }

    #[test]
    fn reshape_keeps_the_batch_only_when_whole() {
        let x = Shape::batched(vec![1, 8, 2, 2], 0);
        assert_eq!(
            reshape_dims(&x, &[0, -1]).unwrap(),
            Shape::batched(vec![1, 32], 0)
        );
        assert_eq!(
            reshape_dims(&x, &[1, 32]).unwrap(),
            Shape::batched(vec![1, 32], 0)
        );
        assert_eq!(reshape_dims(&x, &[-1]).unwrap().batch, None);
        assert!(reshape_dims(&x, &[3, -1]).is_err());
        assert!(reshape_dims(&x, &[-1, -1]).is_err());
    }

    #[test]
    fn zero_and_absurd_shapes_are_rejected() {
        assert!(Shape::fixed(vec![3, 0]).check("t").is_err());
        assert!(Shape::fixed(vec![1 << 20, 1 << 20]).check("t").is_err());
        assert!(Shape::fixed(vec![4096, 25088]).check("t").is_ok());
    }
}
