//! The dense layer (Gemm with a per-output bias) with fused ReLU, and its backward pass.

use super::elementwise::{relu_grad, relu_in_place};
use super::gemm::{gemm, Mat};
use super::{apply2, apply3, contiguous, Call, Elem, Rec};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

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
        want_dx: bool,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let g = relu_grad(grad, res, self.0.relu)?;
        // No input gradient for a plain input (the first layer's data): it is never used.
        let dx = want_dx
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
    Ok(dense_rec(x, w, b, trans_b, relu, Rec::Graph)?.0)
}

/// [`dense`], recorded as `rec` says.
pub fn dense_rec(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    trans_b: bool,
    relu: bool,
    rec: Rec,
) -> crate::Result<Call> {
    let op = DenseFwd(Dense { trans_b, relu });
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => apply3(&x, &w, &b.contiguous()?, op, rec)?,
        None => apply2(&x, &w, op, rec)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::conv;
    use crate::exec::kernels::testing::*;
    use crate::ir::ConvAttrs;
    use candle_core::Device;

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
}
