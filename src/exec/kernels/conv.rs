//! N-d convolution (1 to 3 spatial axes, any pads, strides, dilations and groups) with
//! fused bias and ReLU, and its backward pass: through im2col in general, and without it
//! for stride-1 2-D convolutions (`conv_s1`, most of the convs of a ResNet).

use super::conv_s1::{self, Wide};
use super::elementwise::{relu_grad, relu_in_place};
use super::gemm::{gemm, on_threads, per_sample, Mat};
use super::window::{col2im_one, im2col_one, Window};
use super::{apply2, apply3, contiguous, written, Call, Elem, Rec};
use crate::ir::{ConvAttrs, ConvTransposeAttrs};
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
    /// Run stride-1 convolutions without im2col (`conv_s1`); off only to compare the two.
    direct: bool,
}

impl Conv {
    /// The stride-1 geometry, when this convolution has one and `direct` is on.
    fn wide(&self) -> Option<Wide> {
        self.direct
            .then(|| Wide::of(&self.w, self.m, self.group))
            .flatten()
    }
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
    if let Some(wide) = op.wide() {
        let y = written(w.n * op.m * lo, |y| {
            conv_s1::forward(&wide, x, wt, y, |m, row| {
                if let Some(b) = bias {
                    row.iter_mut().for_each(|v| *v += b[m]);
                }
                if op.relu {
                    relu_in_place(row);
                }
            })
        });
        return Ok((T::to_cpu_storage_owned(y), Shape::from(op.w.out_dims(op.m))));
    }
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
    let w = &op.w;
    let mut shape = vec![w.n, w.c];
    shape.extend_from_slice(&w.input[3 - w.ns..]);
    Ok((
        T::to_cpu_storage_owned(input_grad(op, gy, wt)),
        Shape::from(shape),
    ))
}

/// The input gradient of `op` for output gradient `gy`, (N, C, input..) flat.
fn input_grad<T: Elem>(op: &Conv, gy: &[T], wt: &[T]) -> Vec<T> {
    let (w, lo) = (&op.w, op.w.l());
    let (rows, mg) = op.dims();
    let plane = w.c * w.in_len();
    if let Some(wide) = op.wide() {
        return written(w.n * plane, |dx| conv_s1::input_grad(&wide, gy, wt, dx));
    }
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
    dx
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
    let mut shape = vec![op.m, w.c / op.group];
    shape.extend_from_slice(&w.kernel[3 - w.ns..]);
    if let Some(wide) = op.wide() {
        let dw = conv_s1::weight_grad(&wide, gy, x);
        return Ok((T::to_cpu_storage_owned(dw), Shape::from(shape)));
    }
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
    Ok((T::to_cpu_storage_owned(parts), Shape::from(shape)))
}

struct ConvFwd(Conv);
op2!(ConvDx, "ecc-conv-dx", conv_dx);
op2!(ConvDw, "ecc-conv-dw", conv_dw);

impl ConvFwd {
    fn grads(
        &self,
        want_dx: bool,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let grad = relu_grad(grad, res, self.0.relu)?;
        // No input gradient for a plain input (the first layer's data): it is never used.
        let dx = want_dx
            .then(|| grad.apply_op2_no_bwd(&w.contiguous()?, &ConvDx(self.0.clone())))
            .transpose()?;
        let dw = grad.apply_op2_no_bwd(&x.contiguous()?, &ConvDw(self.0.clone()))?;
        Ok((dx, dw, grad))
    }
}

layer_op!(ConvFwd, "ecc-conv", "ecc-conv-bias", conv_fwd);

impl ConvFwd {
    fn bias_grad(&self, g: &Tensor, _b: &Tensor) -> Result<Tensor> {
        channel_sums(g)
    }
}

/// A per-channel bias's gradient: the output gradient summed over samples and positions.
fn channel_sums(g: &Tensor) -> Result<Tensor> {
    let (n, m) = (g.dims()[0], g.dims()[1]);
    g.reshape((n, m, ()))?.sum(2)?.sum(0)
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
    Ok(conv_with(x, w, b, a, relu, true, Rec::Graph)?.0)
}

/// [`conv`], recorded as `rec` says.
pub fn conv_rec(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &ConvAttrs,
    relu: bool,
    rec: Rec,
) -> crate::Result<Call> {
    conv_with(x, w, b, a, relu, true, rec)
}

/// [`conv`], with the stride-1 path (`direct`) or always through im2col.
fn conv_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &ConvAttrs,
    relu: bool,
    direct: bool,
    rec: Rec,
) -> crate::Result<Call> {
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
        direct,
    });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => apply3(&x, &w, &b.contiguous()?, op, rec)?,
        None => apply2(&x, &w, op, rec)?,
    })
}

/// Transposed convolution, (x, w[, b]) -> y: the input gradient of the convolution whose
/// output has x's shape (the same kernels: col2im, or `conv_s1` at stride 1). Its own input
/// gradient is that convolution's forward pass, its weight gradient that convolution's
/// weight gradient with input and output swapped: ConvTranspose's weight (C_in, C_out /
/// group, k..) is the (M, C / group, k..) of the convolution from C_out to C_in channels.
/// The convolution covers the output up to the full result; `ext` more positions at the
/// end of each spatial axis (`output_padding`, a larger `output_shape`) get no product, and
/// the bias and ReLU are applied over all of it in one copy.
#[derive(Clone)]
struct ConvT {
    conv: Conv,
    /// Output channels.
    m: usize,
    /// Extra end positions per spatial axis (padded to 3, leading ones first).
    ext: [usize; 3],
    relu: bool,
}

impl ConvT {
    /// The output dims (N, M, spatial..): the convolution's input plus `ext`.
    fn out_dims(&self) -> Vec<usize> {
        let w = &self.conv.w;
        let mut d = vec![w.n, self.m];
        d.extend((3 - w.ns..3).map(|i| w.input[i] + self.ext[i]));
        d
    }
}

fn conv_t_fwd<T: Elem>(
    op: &ConvT,
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (x, wt) = (contiguous::<T>(xs, xl)?, contiguous::<T>(ws, wl)?);
    let bias = bias.map(|(s, l)| contiguous::<T>(s, l)).transpose()?;
    let core = input_grad(&op.conv, x, wt);
    let w = &op.conv.w;
    let [d0, d1, d2] = w.input;
    let [e0, e1, e2] = [d0 + op.ext[0], d1 + op.ext[1], d2 + op.ext[2]];
    let planes = w.n * op.m;
    let same = op.ext == [0; 3];
    let mut y = if same {
        core
    } else {
        let mut y = vec![T::zero(); planes * e0 * e1 * e2];
        for p in 0..planes {
            for z in 0..d0 {
                for r in 0..d1 {
                    let src = &core[((p * d0 + z) * d1 + r) * d2..][..d2];
                    y[((p * e0 + z) * e1 + r) * e2..][..d2].copy_from_slice(src);
                }
            }
        }
        y
    };
    for p in 0..planes {
        let b = bias.map_or(T::zero(), |b| b[p % op.m]);
        let yp = &mut y[p * e0 * e1 * e2..][..e0 * e1 * e2];
        if bias.is_some() {
            yp.iter_mut().for_each(|v| *v += b);
        }
        if op.relu {
            relu_in_place(yp);
        }
    }
    Ok((T::to_cpu_storage_owned(y), Shape::from(op.out_dims())))
}

struct ConvTFwd(ConvT);
layer_op!(
    ConvTFwd,
    "ecc-conv-transpose",
    "ecc-conv-transpose-bias",
    conv_t_fwd
);

impl ConvTFwd {
    fn grads(
        &self,
        want_dx: bool,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let op = &self.0;
        let g = relu_grad(grad, res, op.relu)?;
        // The gradient over the convolution's part of the output.
        let mut core = g.clone();
        let ns = op.conv.w.ns;
        for i in 0..ns {
            let len = op.conv.w.input[3 - ns + i];
            if op.ext[3 - ns + i] > 0 {
                core = core.narrow(2 + i, 0, len)?;
            }
        }
        let core = core.contiguous()?;
        let dx = want_dx
            .then(|| core.apply_op2_no_bwd(&w.contiguous()?, &ConvFwd(op.conv.clone())))
            .transpose()?;
        let dw = x
            .contiguous()?
            .apply_op2_no_bwd(&core, &ConvDw(op.conv.clone()))?;
        Ok((dx, dw, g))
    }
    fn bias_grad(&self, g: &Tensor, _b: &Tensor) -> Result<Tensor> {
        channel_sums(g)
    }
}

/// Transposed convolution (see [`ConvTransposeAttrs`]) with optional bias (per output
/// channel) and, with `relu`, a ReLU fused after it.
pub fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &ConvTransposeAttrs,
    relu: bool,
) -> crate::Result<Tensor> {
    Ok(conv_transpose_rec(x, w, b, a, relu, Rec::Graph)?.0)
}

/// [`conv_transpose`], recorded as `rec` says.
pub fn conv_transpose_rec(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &ConvTransposeAttrs,
    relu: bool,
    rec: Rec,
) -> crate::Result<Call> {
    let ns = a.kernel.len();
    let m = w.dims()[1] * a.group;
    // The convolution's input: the transposed convolution's output up to the full result.
    let mut dims = vec![x.dims()[0], m];
    let mut pads = vec![0usize; 2 * ns];
    let mut ext = [0usize; 3];
    for i in 0..ns {
        let full = a.strides[i] * (x.dims()[2 + i] - 1) + a.dilations[i] * (a.kernel[i] - 1) + 1;
        let end = a.pads[ns + i].max(0) as usize;
        dims.push(full - a.pads[i] as usize - end);
        pads[i] = a.pads[i] as usize;
        pads[ns + i] = end;
        ext[3 - ns + i] = (-a.pads[ns + i]).max(0) as usize;
    }
    let win = Window::new(&dims, &a.kernel, &a.strides, &pads, &a.dilations, false)?;
    debug_assert_eq!(&win.out_dims(x.dims()[1])[2..], &x.dims()[2..]);
    let op = ConvTFwd(ConvT {
        conv: Conv {
            w: win,
            group: a.group,
            m: x.dims()[1],
            relu: false,
            direct: true,
        },
        m,
        ext,
        relu,
    });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => apply3(&x, &w, &b.contiguous()?, op, rec)?,
        None => apply2(&x, &w, op, rec)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::testing::*;
    use candle_core::{Device, Var};

    /// The stride-1 path (`conv_s1`) against im2col: outputs and all three gradients, on
    /// geometries with and without padding, non-square kernels, 1-D, and batches spanning
    /// several chunks; plus finite differences through it.
    #[test]
    fn the_stride_1_path_matches_im2col() {
        let dev = Device::Cpu;
        // Random values (seeded): structured ones can put an output exactly at 0, where the
        // two paths' rounding may fall on either side of the ReLU.
        let seq = |n: usize, k: usize| -> Vec<f64> {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(k as u64);
            (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
        };
        // (x dims, weight dims, pads)
        let cases: [(&[usize], &[usize], &[usize]); 9] = [
            (&[3, 4, 7, 6], &[5, 4, 3, 3], &[1, 1, 1, 1]),
            (&[40, 2, 7, 6], &[3, 2, 3, 3], &[1, 1, 1, 1]),
            (&[2, 3, 5, 8], &[4, 3, 1, 1], &[0, 0, 0, 0]),
            (&[2, 3, 6, 5], &[2, 3, 3, 2], &[1, 0, 0, 1]),
            (&[1, 2, 9, 9], &[3, 2, 5, 5], &[2, 2, 1, 0]),
            (&[3, 2, 11], &[4, 2, 3], &[1, 1]),
            // Outputs wider than the input (Wo > W), and a kernel wider than the input.
            (&[2, 3, 4, 5], &[2, 3, 3, 3], &[2, 2, 2, 2]),
            (&[3, 2, 4, 2], &[3, 2, 3, 5], &[1, 4, 1, 0]),
            // A single column, kernel 3 and both pads on one side: shifts past a whole row.
            (&[1, 2, 1, 1], &[2, 2, 1, 3], &[0, 2, 0, 0]),
        ];
        for (xd, wd, pads) in cases {
            let ns = xd.len() - 2;
            let a = ConvAttrs {
                kernel: wd[2..].to_vec(),
                strides: vec![1; ns],
                pads: pads.to_vec(),
                dilations: vec![1; ns],
                group: 1,
            };
            let n: usize = xd.iter().product();
            let x = Var::from_tensor(&Tensor::from_vec(seq(n, 7), xd, &dev).unwrap()).unwrap();
            let nw: usize = wd.iter().product();
            let w = Var::from_tensor(&Tensor::from_vec(seq(nw, 5), wd, &dev).unwrap()).unwrap();
            let b =
                Var::from_tensor(&Tensor::from_vec(seq(wd[0], 3), wd[0], &dev).unwrap()).unwrap();
            let run = |direct: bool| {
                let y = conv_with(&x, &w, Some(&b), &a, true, direct, Rec::Graph)
                    .unwrap()
                    .0;
                let r = Tensor::from_vec(seq(y.elem_count(), 13), y.dims(), &dev).unwrap();
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let grads = [&*x, &*w, &*b].map(|p| v(g.get(p).unwrap()));
                (v(&y), grads)
            };
            let (y1, g1) = run(true);
            let (y0, g0) = run(false);
            let close = |p: &[f64], q: &[f64], what: &str| {
                assert_eq!(p.len(), q.len());
                for (i, (a, b)) in p.iter().zip(q).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                        "{xd:?} {what}[{i}]: {a} vs {b}"
                    );
                }
            };
            close(&y1, &y0, "y");
            for (k, what) in ["dx", "dw", "db"].iter().enumerate() {
                close(&g1[k], &g0[k], what);
            }
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        let w = Tensor::from_vec(f32s(seq(5 * 4 * 9, 5)), (5, 4, 3, 3), &dev).unwrap();
        let a = ConvAttrs {
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            group: 1,
        };
        grad_check(|x| conv(x, &w, None, &a, true).unwrap(), &[2, 4, 5, 6]);
        let x = Tensor::from_vec(f32s(seq(2 * 4 * 30, 7)), (2, 4, 5, 6), &dev).unwrap();
        grad_check(|w| conv(&x, w, None, &a, false).unwrap(), &[5, 4, 3, 3]);
    }

    /// The output and the three gradients have the same bits on 1, 2 and 3 threads, for
    /// batches whose chunks do not divide evenly among the threads (the left-over chunks run
    /// with threaded matmuls inside, `gemm::on_threads`), stride-1 and im2col paths alike.
    #[test]
    fn convolutions_do_not_depend_on_the_threads() {
        use rand::{Rng, SeedableRng};
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut seq = |n: usize| (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        // 8x8 planes: 15 samples per stride-1 chunk, so 64 samples are 5 chunks (4 + 1 on
        // two threads, 3 + 2 on three); stride 2 takes the im2col path (8 samples per
        // weight-gradient chunk: 8 + 1).
        for (n, stride) in [(64, 1), (37, 1), (72, 2)] {
            let (xd, wd) = ([n, 8, 8, 8], [16, 8, 3, 3]);
            let x = Var::from_tensor(&Tensor::from_vec(seq(n * 512), &xd, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::from_vec(seq(16 * 72), &wd, &dev).unwrap()).unwrap();
            let r: Vec<f32> = seq(n * 16 * 64);
            let a = ConvAttrs {
                kernel: vec![3, 3],
                strides: vec![stride; 2],
                pads: vec![1; 4],
                dilations: vec![1, 1],
                group: 1,
            };
            let run = |threads: usize| {
                crate::exec::kernels::testing::with_threads(threads, || {
                    let y = conv(&x, &w, None, &a, true).unwrap();
                    let r = Tensor::from_slice(&r[..y.elem_count()], y.dims(), &dev).unwrap();
                    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let bits = |t: &Tensor| {
                        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        v.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    [bits(&y), bits(g.get(&x).unwrap()), bits(g.get(&w).unwrap())]
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(
                    one == run(threads),
                    "n {n}, stride {stride}, {threads} threads"
                );
            }
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
}
