//! N-d convolution (1 to 3 spatial axes, any pads, strides, dilations and groups) with
//! fused bias and ReLU, and its backward pass.

use super::elementwise::{relu_grad, relu_in_place};
use super::gemm::{gemm, on_threads, per_sample, Mat};
use super::window::{col2im_one, im2col_one, Window};
use super::{contiguous, Elem};
use crate::ir::ConvAttrs;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

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
    let (gy, x) = (contiguous::<T>(gs, gl)?, contiguous::<T>(xs, xl)?);
    let (w, lo) = (&op.w, op.w.l());
    let (rows, mg) = op.dims();
    let plane = w.c * w.in_len();
    let size = op.m * rows;
    let chunks = w.n.div_ceil(DW_CHUNK).max(1);
    let mut parts = vec![T::zero(); chunks * size];
    on_threads(
        parts.chunks_mut(size).collect(),
        w.c * w.k() * lo,
        |c, dw: &mut [T], threads, cols| {
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
}
