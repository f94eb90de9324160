//! N-d convolution (1 to 3 spatial axes, any pads, strides, dilations and groups) with
//! fused bias and ReLU, and its backward pass.

use super::elementwise::{relu_grad, relu_in_place};
use super::gemm::{gemm, Mat};
use super::window::{col2im_one, im2col_one, Window};
use super::{contiguous, Elem};
use crate::ir::ConvAttrs;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// N-d convolution without bias, (x, w) -> y in NC(D)(H)W. The samples go in chunks of
/// [`Conv::chunk`]: im2col of the chunk's samples side by side, one matmul per group over all
/// of them (few output channels and small planes make per-sample matmuls mostly packing
/// overhead), and the result scattered into the output layout. The backward pass computes the
/// input gradient (transposed matmul, col2im) and the weight gradient (matmul with the
/// recomputed im2col, one partial sum per chunk, added in chunk order). The chunks depend on
/// the shapes only, so results do not depend on the number of threads.
#[derive(Clone)]
struct Conv {
    w: Window,
    group: usize,
    m: usize,
    /// A ReLU fused after the bias.
    relu: bool,
}

/// Output positions (columns) that a chunk of samples aims at.
const CHUNK_COLUMNS: usize = 4096;

impl Conv {
    /// (rows of one group's im2col, output channels per group).
    fn dims(&self) -> (usize, usize) {
        (self.w.c / self.group * self.w.k(), self.m / self.group)
    }
    /// Samples per chunk: about [`CHUNK_COLUMNS`] output positions, at most half the batch
    /// (so two threads share the work).
    fn chunk(&self) -> usize {
        (CHUNK_COLUMNS / self.w.l().max(1)).clamp(1, (self.w.n / 2).max(1))
    }
    /// The im2col of samples `first..first + s` side by side into `cols` (rows of s * L).
    fn im2col<T: Elem>(&self, x: &[T], first: usize, s: usize, cols: &mut [T]) {
        let (plane, lo) = (self.w.c * self.w.in_len(), self.w.l());
        let cols = &mut cols[..self.w.c * self.w.k() * s * lo];
        cols.fill(T::zero());
        for j in 0..s {
            let xn = &x[(first + j) * plane..][..plane];
            im2col_one(&self.w, xn, cols, s * lo, j * lo);
        }
    }
}

/// Run `f(index, chunk)` over `items` on every thread, in contiguous runs of items (one
/// run per thread), each thread with one `scratch`-long buffer that it reuses; with a single
/// run, `f` is told it may use threads itself (its bool argument).
fn on_threads<I: Send, T: Elem>(
    items: Vec<I>,
    scratch: usize,
    f: impl Fn(usize, I, bool, &mut Vec<T>) + Sync,
) {
    use rayon::prelude::*;
    let n = items.len();
    let runs = rayon::current_num_threads().min(n).max(1);
    let mut items: Vec<Option<(usize, I)>> = items.into_iter().enumerate().map(Some).collect();
    if runs == 1 {
        let mut buf = vec![T::zero(); scratch];
        for (i, it) in items.into_iter().flatten() {
            f(i, it, true, &mut buf);
        }
        return;
    }
    items.par_chunks_mut(n.div_ceil(runs)).for_each(|run| {
        let mut buf = vec![T::zero(); scratch];
        for slot in run.iter_mut() {
            if let Some((i, it)) = slot.take() {
                f(i, it, false, &mut buf);
            }
        }
    });
}

/// Run `f(first sample, samples, chunk of out, threads, scratch)` over the chunks of `s`
/// samples (`len` values of `out` each), see [`on_threads`].
fn per_chunk<T: Elem>(
    out: &mut [T],
    len: usize,
    s: usize,
    scratch: usize,
    f: impl Fn(usize, usize, &mut [T], bool, &mut Vec<T>) + Sync,
) {
    let step = (s * len).max(1);
    let chunks: Vec<&mut [T]> = out.chunks_mut(step).collect();
    on_threads(chunks, scratch, |c, o: &mut [T], threads, buf| {
        let k = o.len() / len.max(1);
        f(c * s, k, o, threads, buf)
    });
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
    let s = op.chunk();
    let mut y = vec![T::zero(); w.n * op.m * lo];
    let col_len = w.c * w.k() * s * lo;
    per_chunk(
        &mut y,
        op.m * lo,
        s,
        col_len + op.m * s * lo,
        |first, k, yc, threads, buf| {
            let (cols, ybuf) = buf.split_at_mut(col_len);
            op.im2col(x, first, k, cols);
            let ld = k * lo;
            for g in 0..op.group {
                gemm(
                    &mut ybuf[g * mg * ld..][..mg * ld],
                    Mat::of(&wt[g * mg * rows..], mg, rows),
                    Mat::of(&cols[g * rows * ld..], rows, ld),
                    false,
                    threads,
                );
            }
            // Scatter (channel, sample, position) into (sample, channel, position), with
            // the bias and the ReLU in the same pass.
            for (j, yn) in yc.chunks_mut(op.m * lo).enumerate() {
                for (ch, row) in yn.chunks_mut(lo).enumerate() {
                    let src = &ybuf[ch * ld + j * lo..][..lo];
                    let b = bias.map_or(T::zero(), |b| b[ch]);
                    for (d, &v) in row.iter_mut().zip(src) {
                        *d = v + b;
                    }
                    if op.relu {
                        relu_in_place(row);
                    }
                }
            }
        },
    );
    Ok((T::to_cpu_storage_owned(y), Shape::from(op.w.out_dims(op.m))))
}

/// Input gradient: (grad, w) -> dx.
struct ConvDx(Conv);
/// Weight gradient: (grad, x) -> dw.
struct ConvDw(Conv);

/// The output gradient of samples `first..first + k` as (channel, sample, position).
fn gather_grad<T: Elem>(op: &Conv, gy: &[T], first: usize, k: usize, gbuf: &mut [T]) {
    let lo = op.w.l();
    let ld = k * lo;
    for j in 0..k {
        let gn = &gy[(first + j) * op.m * lo..][..op.m * lo];
        for (ch, row) in gn.chunks(lo).enumerate() {
            gbuf[ch * ld + j * lo..][..lo].copy_from_slice(row);
        }
    }
}

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
    let s = op.chunk();
    let mut dx = vec![T::zero(); w.n * plane];
    let col_len = w.c * w.k() * s * lo;
    per_chunk(
        &mut dx,
        plane,
        s,
        col_len + op.m * s * lo,
        |first, k, dxc, threads, buf| {
            let (cols, gbuf) = buf.split_at_mut(col_len);
            gather_grad(op, gy, first, k, gbuf);
            let ld = k * lo;
            for g in 0..op.group {
                gemm(
                    &mut cols[g * rows * ld..][..rows * ld],
                    Mat::of(&wt[g * mg * rows..], mg, rows).t(),
                    Mat::of(&gbuf[g * mg * ld..], mg, ld),
                    false,
                    threads,
                );
            }
            for (j, dxn) in dxc.chunks_mut(plane).enumerate() {
                col2im_one(w, cols, dxn, ld, j * lo);
            }
        },
    );
    let mut shape = vec![w.n, w.c];
    shape.extend_from_slice(&w.input[3 - w.ns..]);
    Ok((T::to_cpu_storage_owned(dx), Shape::from(shape)))
}

fn conv_dw<T: Elem>(
    op: &Conv,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (gy, x) = (contiguous::<T>(gs, gl)?, contiguous::<T>(xs, xl)?);
    let (w, lo) = (&op.w, op.w.l());
    let (rows, mg) = op.dims();
    let s = op.chunk();
    let size = op.m * rows;
    let chunks = w.n.div_ceil(s).max(1);
    let mut parts = vec![T::zero(); chunks * size];
    let col_len = w.c * w.k() * s * lo;
    on_threads(
        parts.chunks_mut(size).collect(),
        col_len + op.m * s * lo,
        |c, dw: &mut [T], threads, buf| {
            let first = c * s;
            let k = s.min(w.n - first);
            let (cols, gbuf) = buf.split_at_mut(col_len);
            op.im2col(x, first, k, cols);
            gather_grad(op, gy, first, k, gbuf);
            let ld = k * lo;
            for g in 0..op.group {
                gemm(
                    &mut dw[g * mg * rows..][..mg * rows],
                    Mat::of(&gbuf[g * mg * ld..], mg, ld),
                    Mat::of(&cols[g * rows * ld..], rows, ld).t(),
                    false,
                    threads,
                );
            }
        },
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::testing::*;
    use candle_core::Device;

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
        // One sample (matmuls threaded inside) and 11 samples: chunks of 5, 5 and 1 (a
        // partial last chunk; weight-gradient partial sums added in order).
        grad_check(|x| conv(x, &wg, None, &ag, false).unwrap(), &[1, 2, 9]);
        grad_check(|x| conv(x, &wg, None, &ag, false).unwrap(), &[11, 2, 5]);
        // Weight gradients, through the same batch sizes.
        for n in [1, 2, 11] {
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
}
