//! CPU kernels that candle lacks in the form ONNX needs: N-d (1 to 3 spatial axes)
//! im2col for convolutions with any pads, strides, dilations and groups, and max/average
//! pooling with pads, dilations and ceil mode. Each is a candle custom op with its backward
//! pass, so autograd flows through it.

use crate::ir::{conv_out_len, ConvAttrs, PoolAttrs};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Window geometry, with the spatial axes padded to 3 (leading axes of size 1).
#[derive(Debug, Clone)]
pub struct Window {
    pub n: usize,
    pub c: usize,
    pub ns: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub pad_end: [usize; 3],
    pub dil: [usize; 3],
    pub out: [usize; 3],
}

impl Window {
    fn new(
        dims: &[usize],
        kernel: &[usize],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
        ceil: bool,
    ) -> crate::Result<Self> {
        let ns = kernel.len();
        if !(1..=3).contains(&ns) || dims.len() != ns + 2 {
            return Err(crate::Error::unsupported(format!(
                "{ns}-D windows (ecc runs 1-D to 3-D)"
            )));
        }
        let mut w = Window {
            n: dims[0],
            c: dims[1],
            ns,
            input: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            pad: [0; 3],
            pad_end: [0; 3],
            dil: [1; 3],
            out: [1; 3],
        };
        let off = 3 - ns;
        for i in 0..ns {
            w.input[off + i] = dims[2 + i];
            w.kernel[off + i] = kernel[i];
            w.stride[off + i] = strides[i];
            w.pad[off + i] = pads[i];
            w.pad_end[off + i] = pads[ns + i];
            w.dil[off + i] = dilations[i];
            w.out[off + i] = conv_out_len(
                dims[2 + i],
                kernel[i],
                strides[i],
                pads[i],
                pads[ns + i],
                dilations[i],
                ceil,
            )?;
        }
        Ok(w)
    }
    fn k(&self) -> usize {
        self.kernel.iter().product()
    }
    fn l(&self) -> usize {
        self.out.iter().product()
    }
    fn in_len(&self) -> usize {
        self.input.iter().product()
    }
    /// Input coordinate along axis `a` for output `o` and tap `k`, if inside the input.
    #[inline]
    fn coord(&self, a: usize, o: usize, k: usize) -> Option<usize> {
        let p = (o * self.stride[a] + k * self.dil[a]) as isize - self.pad[a] as isize;
        (p >= 0 && (p as usize) < self.input[a]).then_some(p as usize)
    }
    fn out_dims(&self, channels: usize) -> Vec<usize> {
        let mut d = vec![self.n, channels];
        d.extend_from_slice(&self.out[3 - self.ns..]);
        d
    }
    /// Visit the output rows (runs along the last spatial axis) of one channel plane, tap by
    /// tap in order: `f(tap, first, base, lo, hi)` says that outputs `first + ox` for `ox` in
    /// `lo..hi` read the input at flat offset `base + ox * stride_x`, and every other output
    /// of that row reads padding. Rows with no output inside the input are not visited.
    #[inline]
    fn for_each_row(&self, mut f: impl FnMut(usize, usize, isize, usize, usize)) {
        let [od, oh, ow] = self.out;
        let [kd, kh, kw] = self.kernel;
        let [_, ih, iw] = self.input;
        let sx = self.stride[2] as isize;
        for z in 0..kd {
            for y in 0..kh {
                for x in 0..kw {
                    let tap = (z * kh + y) * kw + x;
                    // Outputs ox with 0 <= ox * sx + off < iw read inside the input.
                    let off = (x * self.dil[2]) as isize - self.pad[2] as isize;
                    let lo = if off >= 0 {
                        0
                    } else {
                        ((-off + sx - 1) / sx) as usize
                    }
                    .min(ow);
                    let last = iw as isize - 1 - off;
                    let hi = if last < 0 {
                        0
                    } else {
                        (last / sx + 1) as usize
                    }
                    .clamp(lo, ow);
                    if lo == hi {
                        continue;
                    }
                    for a in 0..od {
                        let Some(pz) = self.coord(0, a, z) else {
                            continue;
                        };
                        for b in 0..oh {
                            let Some(py) = self.coord(1, b, y) else {
                                continue;
                            };
                            let base = ((pz * ih + py) * iw) as isize + off;
                            f(tap, (a * oh + b) * ow, base, lo, hi);
                        }
                    }
                }
            }
        }
    }

    /// Visit every (output position, tap, flat input offset) of one channel plane whose tap
    /// lies inside the input, taps in order.
    #[inline]
    fn for_each_inside(&self, mut f: impl FnMut(usize, usize, usize)) {
        let sx = self.stride[2];
        self.for_each_row(|tap, first, base, lo, hi| {
            for ox in lo..hi {
                f(first + ox, tap, (base + (ox * sx) as isize) as usize);
            }
        });
    }
}

/// The element types the kernels run in: f32 (training) and f64 (numerical checks).
trait Elem:
    candle_core::WithDType + num_traits::Float + std::ops::AddAssign + std::ops::DivAssign + 'static
{
}
impl Elem for f32 {}
impl Elem for f64 {}

fn contiguous<'a, T: Elem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("ecc kernel: input is not contiguous"),
    }
}

/// Dispatch on the element type of a storage or tensor.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident $(, $arg:expr)*) => {
        match $dtype {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            other => candle_core::bail!("ecc kernel: element type {other:?} (f32 and f64 only)"),
        }
    };
}

/// im2col of one sample: `x` is (C, plane), `cols` becomes (C * K, L), row `c * K + tap`
/// holding the input value each output position reads through that tap (0 in the padding).
/// With groups, the rows of group `gi` are the contiguous block `gi * C/g * K ..`.
fn im2col_one<T: Elem>(w: &Window, x: &[T], cols: &mut [T]) {
    let (lo, k, plane, sx) = (w.l(), w.k(), w.in_len(), w.stride[2]);
    cols.fill(T::zero());
    for c in 0..w.c {
        let src = &x[c * plane..][..plane];
        let dst = &mut cols[c * k * lo..][..k * lo];
        w.for_each_row(|tap, first, base, a, b| {
            let d = &mut dst[tap * lo + first..][a..b];
            if sx == 1 {
                d.copy_from_slice(&src[(base + a as isize) as usize..][..b - a]);
            } else {
                for (ox, v) in (a..b).zip(d) {
                    *v = src[(base + (ox * sx) as isize) as usize];
                }
            }
        });
    }
}

/// The adjoint of [`im2col_one`]: add each column entry back onto the input it was read from.
fn col2im_one<T: Elem>(w: &Window, cols: &[T], dx: &mut [T]) {
    let (lo, k, plane, sx) = (w.l(), w.k(), w.in_len(), w.stride[2]);
    for c in 0..w.c {
        let src = &cols[c * k * lo..][..k * lo];
        let dst = &mut dx[c * plane..][..plane];
        w.for_each_row(|tap, first, base, a, b| {
            let s = &src[tap * lo + first..][a..b];
            if sx == 1 {
                let d = &mut dst[(base + a as isize) as usize..][..b - a];
                for (d, &v) in d.iter_mut().zip(s) {
                    *d += v;
                }
            } else {
                for (ox, &v) in (a..b).zip(s) {
                    dst[(base + (ox * sx) as isize) as usize] += v;
                }
            }
        });
    }
}

/// A row-major matrix view for [`gemm`]: pointer, rows, columns, and whether to read it
/// transposed.
#[derive(Clone, Copy)]
struct Mat<T> {
    ptr: *const T,
    rows: usize,
    cols: usize,
    t: bool,
}

impl<T> Mat<T> {
    fn of(s: &[T], rows: usize, cols: usize) -> Self {
        assert!(s.len() >= rows * cols);
        Mat {
            ptr: s.as_ptr(),
            rows,
            cols,
            t: false,
        }
    }
    fn t(self) -> Self {
        Mat { t: !self.t, ..self }
    }
    /// (rows, cols, row stride, column stride) as read.
    fn view(&self) -> (usize, usize, isize, isize) {
        let (r, c) = (self.rows, self.cols);
        if self.t {
            (c, r, 1, c as isize)
        } else {
            (r, c, c as isize, 1)
        }
    }
}

/// Matmuls with fewer multiply-adds than this run on one thread even when threads are
/// allowed: below it, handing work to the other thread costs more than it saves.
const PAR_GEMM: usize = 1 << 20;

/// `dst = a * b` (or `dst += a * b` with `accumulate`), dst row-major and contiguous.
fn gemm<T: Elem>(dst: &mut [T], a: Mat<T>, b: Mat<T>, accumulate: bool, threads: bool) {
    let (m, k, a_rs, a_cs) = a.view();
    let (k2, n, b_rs, b_cs) = b.view();
    assert!(k == k2 && dst.len() >= m * n, "gemm shapes");
    // Large outputs of few multiply-adds each (an outer product) are memory-bound writes,
    // which two threads still do faster.
    let par = if threads && (m * n * k >= PAR_GEMM || m * n >= PAR_GEMM / 4) {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every access of gemm inside the three slices, whose
    // strides describe row-major storage; dst does not alias a or b (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a_cs,
            a_rs,
            b.ptr,
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// Run `f(sample index, per-sample output)` over the samples, in parallel over samples when
/// the batch can keep every thread busy, otherwise one sample at a time with multi-threaded
/// matmuls inside (`f`'s bool argument).
fn per_sample<T: Elem>(
    out: &mut [T],
    len: usize,
    scratch: usize,
    f: impl Fn(usize, &mut [T], bool, &mut Vec<T>) + Sync,
) {
    use rayon::prelude::*;
    let n = out.len() / len.max(1);
    let init = || vec![T::zero(); scratch];
    if n >= rayon::current_num_threads() && n > 1 {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each_init(init, |buf, (i, o)| f(i, o, false, buf));
    } else {
        let mut buf = init();
        for (i, o) in out.chunks_mut(len.max(1)).enumerate() {
            f(i, o, true, &mut buf);
        }
    }
}

/// N-d convolution without bias, (x, w) -> y in NC(D)(H)W, computed per sample as im2col and
/// one matmul per group, straight into the output layout; the backward pass computes the
/// input gradient (transposed matmul, col2im) and the weight gradient (matmul with the
/// recomputed im2col, summed over fixed chunks of samples in order, so results do not depend
/// on the number of threads).
#[derive(Clone)]
struct Conv {
    w: Window,
    group: usize,
    m: usize,
    /// A ReLU fused after the bias.
    relu: bool,
}

impl Conv {
    /// (rows of one group's im2col, output channels per group).
    fn dims(&self) -> (usize, usize) {
        (self.w.c / self.group * self.w.k(), self.m / self.group)
    }
}

fn conv_fwd<T: Elem>(
    op: &Conv,
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (x, wt) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?);
    let bias = bias.map(|(s, l)| contiguous::<T>(s, l)).transpose()?;
    let (w, lo) = (&op.w, op.w.l());
    let (rows, mg) = op.dims();
    let plane = w.c * w.in_len();
    let mut y = vec![T::zero(); w.n * op.m * lo];
    per_sample(
        &mut y,
        op.m * lo,
        w.c * w.k() * lo,
        |n, yn, threads, cols| {
            im2col_one(w, &x[n * plane..][..plane], cols);
            for g in 0..op.group {
                gemm(
                    &mut yn[g * mg * lo..][..mg * lo],
                    Mat::of(&wt[g * mg * rows..], mg, rows),
                    Mat::of(&cols[g * rows * lo..], rows, lo),
                    false,
                    threads,
                );
            }
            if let Some(b) = bias {
                for (row, &b) in yn.chunks_mut(lo).zip(b) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
            if op.relu {
                relu_in_place(yn);
            }
        },
    );
    Ok((T::to_cpu_storage_owned(y), Shape::from(op.w.out_dims(op.m))))
}

/// Input gradient: (grad, w) -> dx.
struct ConvDx(Conv);
/// Weight gradient: (grad, x) -> dw.
struct ConvDw(Conv);

fn conv_dx<T: Elem>(
    op: &Conv,
    gs: &CpuStorage,
    gl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (gy, wt) = (contiguous::<T>(gs, gl)?, contiguous::<T>(ws, wl)?);
    let (w, lo) = (&op.w, op.w.l());
    let (rows, mg) = op.dims();
    let plane = w.c * w.in_len();
    let mut dx = vec![T::zero(); w.n * plane];
    per_sample(&mut dx, plane, w.c * w.k() * lo, |n, dxn, threads, cols| {
        let gn = &gy[n * op.m * lo..][..op.m * lo];
        for g in 0..op.group {
            gemm(
                &mut cols[g * rows * lo..][..rows * lo],
                Mat::of(&wt[g * mg * rows..], mg, rows).t(),
                Mat::of(&gn[g * mg * lo..], mg, lo),
                false,
                threads,
            );
        }
        col2im_one(w, cols, dxn);
    });
    let mut shape = vec![w.n, w.c];
    shape.extend_from_slice(&w.input[3 - w.ns..]);
    Ok((T::to_cpu_storage_owned(dx), Shape::from(shape)))
}

/// Samples per partial sum of the weight gradient.
const DW_CHUNK: usize = 8;

fn conv_dw<T: Elem>(
    op: &Conv,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let (gy, x) = (contiguous::<T>(gs, gl)?, contiguous::<T>(xs, xl)?);
    let (w, lo) = (&op.w, op.w.l());
    let (rows, mg) = op.dims();
    let plane = w.c * w.in_len();
    let size = op.m * rows;
    let chunks = w.n.div_ceil(DW_CHUNK).max(1);
    let mut parts = vec![T::zero(); chunks * size];
    let threads = chunks < rayon::current_num_threads();
    let scratch = || vec![T::zero(); w.c * w.k() * lo];
    parts
        .par_chunks_mut(size)
        .enumerate()
        .for_each_init(scratch, |cols, (c, dw)| {
            for n in c * DW_CHUNK..((c + 1) * DW_CHUNK).min(w.n) {
                im2col_one(w, &x[n * plane..][..plane], cols);
                let gn = &gy[n * op.m * lo..][..op.m * lo];
                for g in 0..op.group {
                    gemm(
                        &mut dw[g * mg * rows..][..mg * rows],
                        Mat::of(&gn[g * mg * lo..], mg, lo),
                        Mat::of(&cols[g * rows * lo..], rows, lo).t(),
                        true,
                        threads,
                    );
                }
            }
        });
    let (first, rest) = parts.split_at_mut(size);
    for part in rest.chunks(size) {
        for (a, b) in first.iter_mut().zip(part) {
            *a += *b;
        }
    }
    parts.truncate(size);
    let mut shape = vec![op.m, w.c / op.group];
    shape.extend_from_slice(&w.kernel[3 - w.ns..]);
    Ok((T::to_cpu_storage_owned(parts), Shape::from(shape)))
}

macro_rules! op2 {
    ($ty:ty, $name:literal, $f:ident) => {
        impl CustomOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                by_dtype!(s1.dtype(), $f, &self.0, s1, l1, s2, l2)
            }
        }
    };
}

/// A layer op with a weight and an optional bias, as two candle ops: (x, w) and (x, w, b).
/// `$fwd(op, x, w, bias)` computes the output; the type provides `grads(x, w, y, grad)` ->
/// (input gradient if wanted, weight gradient, output gradient after the fused ReLU) and
/// `bias_grad(output gradient, b)`.
macro_rules! layer_op {
    ($ty:ty, $name:literal, $name_bias:literal, $fwd:ident) => {
        impl CustomOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                by_dtype!(s1.dtype(), $fwd, &self.0, s1, l1, s2, l2, None)
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                res: &Tensor,
                grad: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                let (dx, dw, _) = self.grads(x, w, res, grad)?;
                Ok((dx, Some(dw)))
            }
        }

        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name_bias
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
                s3: &CpuStorage,
                l3: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let bias = Some((s3, l3));
                by_dtype!(s1.dtype(), $fwd, &self.0, s1, l1, s2, l2, bias)
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                b: &Tensor,
                res: &Tensor,
                grad: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                let (dx, dw, g) = self.grads(x, w, res, grad)?;
                Ok((dx, Some(dw), Some(self.bias_grad(&g, b)?)))
            }
        }
    };
}

struct ConvFwd(Conv);
op2!(ConvDx, "ecc-conv-dx", conv_dx);
op2!(ConvDw, "ecc-conv-dw", conv_dw);

impl ConvFwd {
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let grad = relu_grad(grad, res, self.0.relu)?;
        // No input gradient for a plain input (the first layer's data): it is never used.
        let dx = x
            .track_op()
            .then(|| grad.apply_op2_no_bwd(&w.contiguous()?, &ConvDx(self.0.clone())))
            .transpose()?;
        let dw = grad.apply_op2_no_bwd(&x.contiguous()?, &ConvDw(self.0.clone()))?;
        Ok((dx, dw, grad))
    }
}

layer_op!(ConvFwd, "ecc-conv", "ecc-conv-bias", conv_fwd);

impl ConvFwd {
    /// The bias gradient: the output gradient summed over samples and positions.
    fn bias_grad(&self, g: &Tensor, _b: &Tensor) -> Result<Tensor> {
        let (n, m) = (g.dims()[0], g.dims()[1]);
        g.reshape((n, m, ()))?.sum(2)?.sum(0)
    }
}

/// Written as a select, not a branch: a branch on the sign of (random) data mispredicts
/// half the time, and a select vectorizes. NaN stays NaN.
fn relu_in_place<T: Elem>(v: &mut [T]) {
    let zero = T::zero();
    v.iter_mut()
        .for_each(|x| *x = if *x < zero { zero } else { *x });
}

/// The output gradient of a fused ReLU: `grad` where the output `y` is positive, 0 elsewhere
/// (the derivative at 0 is taken as 0, as candle's relu does). Without `relu`, `grad` itself.
fn relu_grad(grad: &Tensor, y: &Tensor, relu: bool) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    if !relu {
        return Ok(grad);
    }
    grad.apply_op2_no_bwd(&y.contiguous()?, &ReluMask)
}

struct ReluMask;

fn relu_mask<T: Elem>(
    gs: &CpuStorage,
    gl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let (g, y) = (contiguous::<T>(gs, gl)?, contiguous::<T>(ys, yl)?);
    let mut out = vec![T::zero(); g.len()];
    let zero = T::zero();
    out.par_chunks_mut(1 << 14)
        .zip(g.par_chunks(1 << 14).zip(y.par_chunks(1 << 14)))
        .for_each(|(o, (g, y))| {
            for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                *o = if y > zero { g } else { zero };
            }
        });
    Ok((T::to_cpu_storage_owned(out), gl.shape().clone()))
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "ecc-relu-mask"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1.dtype(), relu_mask, s1, l1, s2, l2)
    }
}

/// A dense layer `y = x w^T + b` (`w` is (out, in), as Gemm with transB=1 and PyTorch's
/// Linear store it) or `y = x w + b` (`w` is (in, out)), with an optional fused ReLU. One
/// matmul forward, two backward, written straight into contiguous results, the bias and the
/// ReLU applied in the same pass as the matmul's output.
#[derive(Clone, Copy)]
struct Dense {
    trans_b: bool,
    relu: bool,
}

impl Dense {
    /// (batch, in, out) from the shapes of x and w.
    fn dims(&self, x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
        let ((b, k), (r, c)) = (x.shape().dims2()?, w.shape().dims2()?);
        let (k2, n) = if self.trans_b { (c, r) } else { (r, c) };
        if k != k2 {
            candle_core::bail!("ecc dense: x is {b}x{k}, weight is {r}x{c}");
        }
        Ok((b, k, n))
    }
    fn weight<T>(&self, w: &[T], k: usize, n: usize) -> Mat<T> {
        if self.trans_b {
            Mat::of(w, n, k).t()
        } else {
            Mat::of(w, k, n)
        }
    }
}

fn dense_fwd<T: Elem>(
    op: &Dense,
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let (b, k, n) = op.dims(xl, wl)?;
    let (x, w) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?);
    let mut y = vec![T::zero(); b * n];
    if let Some((s, l)) = bias {
        let bias = contiguous::<T>(s, l)?;
        if bias.len() != n {
            candle_core::bail!("ecc dense: bias of {} for {n} outputs", bias.len());
        }
        y.chunks_mut(n).for_each(|r| r.copy_from_slice(bias));
    }
    gemm(
        &mut y,
        Mat::of(x, b, k),
        op.weight(w, k, n),
        bias.is_some(),
        true,
    );
    if op.relu {
        y.par_chunks_mut(1 << 14).for_each(relu_in_place);
    }
    Ok((T::to_cpu_storage_owned(y), Shape::from((b, n))))
}

/// `dst = src * src` elementwise, written into dst's storage (Path-SGD's squared network,
/// spec §7, takes its weights this way every step without allocating).
struct SquareInto;

fn square_into_slices<T: Elem>(d: &mut [T], s: &[T]) {
    use rayon::prelude::*;
    d.par_chunks_mut(1 << 14)
        .zip(s.par_chunks(1 << 14))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d = s * s));
}

impl candle_core::InplaceOp2 for SquareInto {
    fn name(&self) -> &'static str {
        "ecc-square-into"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let range = |l: &Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("ecc square: not contiguous".into()))
        };
        let ((a, b), (c, e)) = (range(l1)?, range(l2)?);
        if b - a != e - c {
            candle_core::bail!("ecc square: {} values into {}", e - c, b - a);
        }
        match (s1, s2) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => square_into_slices(&mut d[a..b], &s[c..e]),
            (CpuStorage::F64(d), CpuStorage::F64(s)) => square_into_slices(&mut d[a..b], &s[c..e]),
            _ => candle_core::bail!("ecc square: f32 or f64, both the same"),
        }
        Ok(())
    }
}

/// Overwrite `dst` with `src²` (same shape and float type, both contiguous).
pub fn square_into(dst: &Tensor, src: &Tensor) -> crate::Result<()> {
    if dst.dims() != src.dims() {
        return Err(crate::Error::shape(format!(
            "squaring {:?} into {:?}",
            src.dims(),
            dst.dims()
        )));
    }
    Ok(dst.inplace_op2(&src.contiguous()?, &SquareInto)?)
}

/// Column sums of a (rows, n) matrix: the bias gradient of a dense layer. Rows are added in
/// order (vectorized across columns), so the result is deterministic.
struct ColSum;

fn col_sum<T: Elem>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (_, n) = l.shape().dims2()?;
    let x = contiguous::<T>(s, l)?;
    let mut acc = vec![T::zero(); n];
    for row in x.chunks(n.max(1)) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
    Ok((T::to_cpu_storage_owned(acc), Shape::from(n)))
}

impl CustomOp1 for ColSum {
    fn name(&self) -> &'static str {
        "ecc-col-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), col_sum, s, l)
    }
}

/// (grad, w) -> dx.
struct DenseDx(Dense);
/// (grad, x) -> dw.
struct DenseDw(Dense);

fn dense_dx<T: Elem>(
    op: &Dense,
    gs: &CpuStorage,
    gl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let ((b, n), w) = (gl.shape().dims2()?, contiguous::<T>(ws, wl)?);
    let k = w.len() / n.max(1);
    let g = contiguous::<T>(gs, gl)?;
    let mut dx = vec![T::zero(); b * k];
    gemm(
        &mut dx,
        Mat::of(g, b, n),
        op.weight(w, k, n).t(),
        false,
        true,
    );
    Ok((T::to_cpu_storage_owned(dx), Shape::from((b, k))))
}

fn dense_dw<T: Elem>(
    op: &Dense,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let ((b, n), (_, k)) = (gl.shape().dims2()?, xl.shape().dims2()?);
    let (g, x) = (contiguous::<T>(gs, gl)?, contiguous::<T>(xs, xl)?);
    let mut dw = vec![T::zero(); k * n];
    if op.trans_b {
        gemm(&mut dw, Mat::of(g, b, n).t(), Mat::of(x, b, k), false, true);
        Ok((T::to_cpu_storage_owned(dw), Shape::from((n, k))))
    } else {
        gemm(&mut dw, Mat::of(x, b, k).t(), Mat::of(g, b, n), false, true);
        Ok((T::to_cpu_storage_owned(dw), Shape::from((k, n))))
    }
}

op2!(DenseDx, "ecc-dense-dx", dense_dx);
op2!(DenseDw, "ecc-dense-dw", dense_dw);

struct DenseFwd(Dense);

impl DenseFwd {
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let g = relu_grad(grad, res, self.0.relu)?;
        // No input gradient for a plain input (the first layer's data): it is never used.
        let dx = x
            .track_op()
            .then(|| g.apply_op2_no_bwd(&w.contiguous()?, &DenseDx(self.0)))
            .transpose()?;
        let dw = g.apply_op2_no_bwd(&x.contiguous()?, &DenseDw(self.0))?;
        Ok((dx, dw, g))
    }
}

layer_op!(DenseFwd, "ecc-dense", "ecc-dense-bias", dense_fwd);

impl DenseFwd {
    /// The bias gradient: the column sums of the output gradient.
    fn bias_grad(&self, g: &Tensor, b: &Tensor) -> Result<Tensor> {
        g.apply_op1_no_bwd(&ColSum)?.reshape(b.shape())
    }
}

/// A dense layer on a 2-D input: `x w^T + b` with `trans_b` (w is (out, in)), else `x w + b`;
/// `b` has one value per output; with `relu` a ReLU is fused after it.
pub fn dense(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    trans_b: bool,
    relu: bool,
) -> crate::Result<Tensor> {
    let op = DenseFwd(Dense { trans_b, relu });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    })
}

/// N-d convolution with optional bias (added per output channel), and with `relu` a ReLU
/// fused after it.
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &ConvAttrs,
    relu: bool,
) -> crate::Result<Tensor> {
    let win = Window::new(
        x.dims(),
        &a.kernel,
        &a.strides,
        &a.pads,
        &a.dilations,
        false,
    )?;
    let m = w.dims()[0];
    let op = ConvFwd(Conv {
        w: win,
        group: a.group,
        m,
        relu,
    });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Max,
    Avg { count_include_pad: bool },
}

struct Pool {
    w: Window,
    kind: PoolKind,
}

impl Pool {
    /// Divisor of average pooling at output `o` of one plane: the taps inside the input, or
    /// with count_include_pad the taps inside the padded input (as onnxruntime does).
    fn divisors(&self) -> Vec<f32> {
        let w = &self.w;
        let mut inside = vec![0f32; w.l()];
        w.for_each_inside(|o, _, _| inside[o] += 1.0);
        if let PoolKind::Avg {
            count_include_pad: true,
        } = self.kind
        {
            // Count taps whose coordinate lies in [-pad_begin, len + pad_end) on each axis.
            let [_, oh, ow] = w.out;
            let mut counts = vec![1f32; w.l()];
            for (o, cnt) in counts.iter_mut().enumerate() {
                let idx = [o / (oh * ow), (o / ow) % oh, o % ow];
                for (a, &i) in idx.iter().enumerate() {
                    let start = (i * w.stride[a]) as isize - w.pad[a] as isize;
                    let eff = ((w.kernel[a] - 1) * w.dil[a] + 1) as isize;
                    let end = (start + eff).min((w.input[a] + w.pad_end[a]) as isize);
                    let d = w.dil[a] as isize;
                    *cnt *= ((end - start + d - 1) / d).max(1) as f32;
                }
            }
            return counts;
        }
        inside.iter().map(|&c| c.max(1.0)).collect()
    }

    /// [`Pool::divisors`] in the kernel's element type (none for max pooling).
    fn divisors_as<T: Elem>(&self) -> Vec<T> {
        if self.kind == PoolKind::Max {
            return vec![];
        }
        self.divisors()
            .into_iter()
            .map(|d| T::from(d).expect("a float"))
            .collect()
    }

    /// The common 2x2 max pooling with stride 2, no padding or dilation, 2-D, even
    /// height and width: plain loops instead of the general window walk.
    fn is_max_2x2(&self) -> bool {
        let w = &self.w;
        self.kind == PoolKind::Max
            && w.ns == 2
            && w.kernel == [1, 2, 2]
            && w.stride == [1, 2, 2]
            && w.dil == [1, 1, 1]
            && w.pad == [0; 3]
            && w.pad_end == [0; 3]
            && w.out[1] * 2 == w.input[1]
            && w.out[2] * 2 == w.input[2]
    }
}

/// 2x2 max pooling of one plane (see [`Pool::is_max_2x2`]); the same NaN rule as the
/// general path (a NaN tap wins). Selects, not branches (which tap is largest is data).
fn max_2x2_plane<T: Elem>(iw: usize, src: &[T], out: &mut [T]) {
    let ow = iw / 2;
    for (oy, orow) in out.chunks_mut(ow.max(1)).enumerate() {
        let (r0, r1) = (&src[2 * oy * iw..][..iw], &src[(2 * oy + 1) * iw..][..iw]);
        for ((o, a), b) in orow
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            let mut m = a[0];
            for v in [a[1], b[0], b[1]] {
                m = if v > m || v.is_nan() { v } else { m };
            }
            *o = m;
        }
    }
}

/// Its backward: each output's gradient goes to the first of the four taps (row-major)
/// equal to the output. The windows do not overlap, so every input is written once; the
/// choice is made with selects, without branches.
fn max_2x2_plane_bwd<T: Elem>(iw: usize, src: &[T], y: &[T], g: &[T], dst: &mut [T]) {
    let ow = iw / 2;
    let zero = T::zero();
    for (oy, (yrow, grow)) in y.chunks(ow.max(1)).zip(g.chunks(ow.max(1))).enumerate() {
        let (r0, r1) = (&src[2 * oy * iw..][..iw], &src[(2 * oy + 1) * iw..][..iw]);
        let (d0, d1) = dst[2 * oy * iw..][..2 * iw].split_at_mut(iw);
        for ((((&m, &gv), (a, b)), da), db) in yrow
            .iter()
            .zip(grow)
            .zip(r0.chunks_exact(2).zip(r1.chunks_exact(2)))
            .zip(d0.chunks_exact_mut(2))
            .zip(d1.chunks_exact_mut(2))
        {
            let e = [a[0] == m, a[1] == m, b[0] == m, b[1] == m];
            let t = [
                e[0],
                e[1] & !e[0],
                e[2] & !(e[0] | e[1]),
                e[3] & !(e[0] | e[1] | e[2]),
            ];
            da[0] = if t[0] { gv } else { zero };
            da[1] = if t[1] { gv } else { zero };
            db[0] = if t[2] { gv } else { zero };
            db[1] = if t[3] { gv } else { zero };
        }
    }
}

/// Pooling forward, in parallel over the (sample, channel) planes.
fn pool_fwd<T: Elem>(op: &Pool, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let x = contiguous::<T>(s, l)?;
    let w = &op.w;
    let (plane, lo) = (w.in_len(), w.l());
    let mut y = vec![T::zero(); w.n * w.c * lo];
    let div = op.divisors_as::<T>();
    let fast = op.is_max_2x2();
    y.par_chunks_mut(lo.max(1))
        .enumerate()
        .for_each(|(p, out)| {
            let src = &x[p * plane..][..plane];
            if fast {
                return max_2x2_plane(w.input[2], src, out);
            }
            match op.kind {
                PoolKind::Max => {
                    out.fill(T::neg_infinity());
                    w.for_each_inside(|o, _, s| {
                        if src[s] > out[o] || src[s].is_nan() {
                            out[o] = src[s];
                        }
                    });
                }
                PoolKind::Avg { .. } => {
                    w.for_each_inside(|o, _, s| out[o] += src[s]);
                    for (v, d) in out.iter_mut().zip(&div) {
                        *v /= *d;
                    }
                }
            }
        });
    Ok((T::to_cpu_storage_owned(y), Shape::from(w.out_dims(w.c))))
}

/// Pooling backward, (grad, x, y) -> dx, in parallel over planes. Max pooling sends each
/// output's gradient to the first tap that attains the max.
struct PoolBwd<'a>(&'a Pool);

fn pool_bwd<T: Elem>(
    op: &Pool,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let (g, x, y) = (
        contiguous::<T>(gs, gl)?,
        contiguous::<T>(xs, xl)?,
        contiguous::<T>(ys, yl)?,
    );
    let w = &op.w;
    let (plane, lo) = (w.in_len(), w.l());
    let mut dx = vec![T::zero(); x.len()];
    let div = op.divisors_as::<T>();
    let fast = op.is_max_2x2();
    dx.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(p, dst)| {
            let src = &x[p * plane..][..plane];
            let (yp, gp) = (&y[p * lo..][..lo], &g[p * lo..][..lo]);
            if fast {
                return max_2x2_plane_bwd(w.input[2], src, yp, gp, dst);
            }
            match op.kind {
                PoolKind::Max => {
                    let mut taken = vec![false; lo];
                    w.for_each_inside(|o, _, s| {
                        if !taken[o] && src[s] == yp[o] {
                            dst[s] += gp[o];
                            taken[o] = true;
                        }
                    });
                }
                PoolKind::Avg { .. } => w.for_each_inside(|o, _, s| dst[s] += gp[o] / div[o]),
            }
        });
    Ok((T::to_cpu_storage_owned(dx), xl.shape().clone()))
}

impl candle_core::CustomOp3 for PoolBwd<'_> {
    fn name(&self) -> &'static str {
        "ecc-pool-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1.dtype(), pool_bwd, self.0, s1, l1, s2, l2, s3, l3)
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "ecc-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), pool_fwd, self, s, l)
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            &arg.contiguous()?,
            &res.contiguous()?,
            &PoolBwd(self),
        )?;
        Ok(Some(dx))
    }
}

fn pool(x: &Tensor, p: &PoolAttrs, kind: PoolKind) -> crate::Result<Tensor> {
    let w = Window::new(
        x.dims(),
        &p.kernel,
        &p.strides,
        &p.pads,
        &p.dilations,
        p.ceil_mode,
    )?;
    Ok(x.contiguous()?.apply_op1(Pool { w, kind })?)
}

pub fn max_pool(x: &Tensor, p: &PoolAttrs) -> crate::Result<Tensor> {
    pool(x, p, PoolKind::Max)
}

pub fn average_pool(x: &Tensor, p: &PoolAttrs, count_include_pad: bool) -> crate::Result<Tensor> {
    pool(x, p, PoolKind::Avg { count_include_pad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// d/dx of sum(f(x) * r) by autograd against central differences.
    fn grad_check(f: impl Fn(&Tensor) -> Tensor, dims: &[usize]) {
        let dev = Device::Cpu;
        // Distinct values 0.05 apart, shuffled with a fixed seed: no max-pool tie is within
        // reach of the finite-difference step, and the test is deterministic.
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n: usize = dims.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
        v.shuffle(&mut rng);
        let x = Var::from_tensor(&Tensor::from_vec(v, dims, &dev).unwrap()).unwrap();
        let y = f(x.as_tensor());
        let r = Tensor::from_vec(
            (0..y.elem_count())
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
                .collect::<Vec<_>>(),
            y.dims(),
            &dev,
        )
        .unwrap();
        let loss = (y * &r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let x0 = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in (0..x0.len()).step_by(7) {
            let at = |d: f32| {
                let mut v = x0.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, dims, &dev).unwrap();
                (f(&t) * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 2e-2 * (1.0 + fd.abs()),
                "at {i}: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }

    #[test]
    fn conv_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(
            (0..72)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
                .collect::<Vec<_>>(),
            (4, 3, 3, 2),
            &dev,
        )
        .unwrap();
        let a = ConvAttrs {
            kernel: vec![3, 2],
            strides: vec![2, 1],
            pads: vec![1, 0, 0, 1],
            dilations: vec![1, 2],
            group: 1,
        };
        grad_check(|x| conv(x, &w, None, &a, false).unwrap(), &[2, 3, 7, 6]);
        let b = Tensor::new(&[0.5f32, -1.0, 0.25, 2.0], &dev).unwrap();
        grad_check(|x| conv(x, &w, Some(&b), &a, false).unwrap(), &[2, 3, 7, 6]);
        let wg = Tensor::from_vec(
            (0..12)
                .map(|i| ((i * 5 % 7) as f32 - 3.0) / 3.0)
                .collect::<Vec<_>>(),
            (4, 1, 3),
            &dev,
        )
        .unwrap();
        let ag = ConvAttrs {
            kernel: vec![3],
            strides: vec![1],
            pads: vec![1, 1],
            dilations: vec![1],
            group: 2,
        };
        grad_check(|x| conv(x, &wg, None, &ag, false).unwrap(), &[2, 2, 9]);
        // One sample (matmuls threaded inside) and more samples than a weight-gradient
        // chunk (partial sums added in order).
        grad_check(|x| conv(x, &wg, None, &ag, false).unwrap(), &[1, 2, 9]);
        grad_check(
            |x| conv(x, &wg, None, &ag, false).unwrap(),
            &[DW_CHUNK + 3, 2, 5],
        );
        // Weight gradients, through the same batch sizes.
        for n in [1, 2, DW_CHUNK + 3] {
            let x = Tensor::from_vec(
                (0..n * 3 * 5 * 4)
                    .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
                    .collect::<Vec<_>>(),
                (n, 3, 5, 4),
                &dev,
            )
            .unwrap();
            grad_check(|w| conv(&x, w, None, &a, false).unwrap(), &[4, 3, 3, 2]);
            let w0 = w.clone();
            grad_check(|b| conv(&x, &w0, Some(b), &a, false).unwrap(), &[4]);
            let xg = x.narrow(1, 0, 2).unwrap().flatten_from(2).unwrap();
            grad_check(|w| conv(&xg, w, None, &ag, false).unwrap(), &[4, 1, 3]);
        }
    }

    /// The gradients of `sum(f(v) * r)` with respect to every input agree between a fused
    /// kernel and its unfused reference (exactly where ReLU's kink is involved, up to
    /// rounding elsewhere).
    fn same_grads(
        fused: impl Fn(&[Tensor]) -> Tensor,
        plain: impl Fn(&[Tensor]) -> Tensor,
        inputs: &[&Tensor],
    ) {
        let grads = |f: &dyn Fn(&[Tensor]) -> Tensor| {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts);
            let r = Tensor::from_vec(
                (0..y.elem_count())
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
                    .collect::<Vec<_>>(),
                y.dims(),
                &Device::Cpu,
            )
            .unwrap();
            let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
            ts.iter()
                .map(|t| {
                    g.get(t)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (grads(&fused), grads(&plain));
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "input {i}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn fused_relu_and_dense_kernels_match_references() {
        let dev = Device::Cpu;
        let vals = |n: usize, k: usize| {
            (0..n)
                .map(|i| ((i * k % 23) as f32 - 11.0) / 9.0)
                .collect::<Vec<_>>()
        };
        let w = Tensor::from_vec(vals(72, 13), (4, 3, 3, 2), &dev).unwrap();
        let b = Tensor::new(&[0.5f32, -1.0, 0.25, 2.0], &dev).unwrap();
        let a = ConvAttrs {
            kernel: vec![3, 2],
            strides: vec![1, 1],
            pads: vec![1, 0, 1, 1],
            dilations: vec![1, 1],
            group: 1,
        };
        // The fused ReLU equals conv then relu, and its gradients check out.
        let x = Tensor::from_vec(vals(2 * 3 * 5 * 4, 7), (2, 3, 5, 4), &dev).unwrap();
        let fused = conv(&x, &w, Some(&b), &a, true).unwrap();
        let plain = conv(&x, &w, Some(&b), &a, false).unwrap().relu().unwrap();
        let diff = (fused - plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        same_grads(
            |v| conv(&v[0], &v[1], Some(&v[2]), &a, true).unwrap(),
            |v| {
                conv(&v[0], &v[1], Some(&v[2]), &a, false)
                    .unwrap()
                    .relu()
                    .unwrap()
            },
            &[&x, &w, &b],
        );
        // Dense: weight as (out, in) and as (in, out), with and without bias and ReLU.
        let xd = Tensor::from_vec(vals(5 * 6, 5), (5, 6), &dev).unwrap();
        let bd = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap();
        for trans_b in [true, false] {
            let wshape: &[usize] = if trans_b { &[4, 6] } else { &[6, 4] };
            let wd = Tensor::from_vec(vals(24, 11), wshape, &dev).unwrap();
            let reference = if trans_b {
                xd.matmul(&wd.t().unwrap())
            } else {
                xd.matmul(&wd)
            }
            .unwrap()
            .broadcast_add(&bd)
            .unwrap()
            .relu()
            .unwrap();
            let got = dense(&xd, &wd, Some(&bd), trans_b, true).unwrap();
            let diff = (got - reference).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
            grad_check(
                |x| dense(x, &wd, Some(&bd), trans_b, false).unwrap(),
                &[5, 6],
            );
            grad_check(|w| dense(&xd, w, None, trans_b, false).unwrap(), wshape);
            grad_check(|b| dense(&xd, &wd, Some(b), trans_b, false).unwrap(), &[4]);
            same_grads(
                |v| dense(&v[0], &v[1], Some(&v[2]), trans_b, true).unwrap(),
                |v| {
                    dense(&v[0], &v[1], Some(&v[2]), trans_b, false)
                        .unwrap()
                        .relu()
                        .unwrap()
                },
                &[&xd, &wd, &bd],
            );
        }
    }

    /// 2x2 pooling with stride 2, no padding: the fast path's case.
    fn max_2x2() -> PoolAttrs {
        PoolAttrs {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            ceil_mode: false,
        }
    }

    #[test]
    fn max_pool_2x2_fast_path_matches_candle_and_finite_differences() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v: Vec<f32> = (0..2 * 3 * 6 * 8).map(|i| i as f32 * 0.01 - 1.0).collect();
        v.shuffle(&mut rng);
        let x = Tensor::from_vec(v, (2, 3, 6, 8), &Device::Cpu).unwrap();
        let p = max_2x2();
        let ours = max_pool(&x, &p).unwrap();
        let theirs = x.max_pool2d(2).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // candle's own max_pool2d backward scales the gradient by 1/4 (it averages a mask),
        // so the gradient is checked against finite differences instead.
        grad_check(|x| max_pool(x, &p).unwrap(), &[2, 3, 6, 8]);
    }

    #[test]
    fn max_pool_2x2_ties_send_the_gradient_to_the_first_tap() {
        // Values from {0, 0.5, 1}: most windows have ties (as ReLU outputs at 0 do).
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, c, h, w) = (2, 3, 4, 6);
        let v: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.gen_range(0..3) as f32 * 0.5)
            .collect();
        let x = Var::from_vec(v.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let p = max_2x2();
        let y = max_pool(x.as_tensor(), &p).unwrap();
        let (oh, ow) = (h / 2, w / 2);
        let g: Vec<f32> = (0..n * c * oh * ow).map(|i| 1.0 + i as f32).collect();
        let gt = Tensor::from_vec(g.clone(), y.dims(), &Device::Cpu).unwrap();
        let dx = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = dx.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let dx = dx.to_vec1::<f32>().unwrap();
        let mut want = vec![0f32; v.len()];
        let mut ties = 0;
        for p in 0..n * c {
            for (oy, ox) in (0..oh).flat_map(|a| (0..ow).map(move |b| (a, b))) {
                let taps = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(dy, dx)| p * h * w + (2 * oy + dy) * w + 2 * ox + dx);
                let m = taps.iter().map(|&t| v[t]).fold(f32::MIN, f32::max);
                let first = *taps.iter().find(|&&t| v[t] == m).unwrap();
                ties += (taps.iter().filter(|&&t| v[t] == m).count() > 1) as usize;
                want[first] = g[p * oh * ow + oy * ow + ox];
            }
        }
        assert!(ties > 10, "the input has ties ({ties})");
        assert_eq!(dx, want);
    }

    #[test]
    fn pool_gradients_match_finite_differences() {
        let p = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            ceil_mode: true,
        };
        grad_check(|x| average_pool(x, &p, false).unwrap(), &[2, 2, 7, 6]);
        grad_check(|x| average_pool(x, &p, true).unwrap(), &[2, 2, 7, 6]);
        grad_check(|x| max_pool(x, &p).unwrap(), &[2, 2, 7, 6]);
    }
}
