//! Elementwise kernels: ReLU and its gradient mask (as selects), the sum of two tensors with
//! a ReLU (a residual block's end), squaring in place.

use super::{apply2, contiguous, Call, Elem, Rec, TapeOp};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Written as a select, not a branch: a branch on the sign of (random) data mispredicts
/// half the time, and a select vectorizes. NaN stays NaN.
pub(super) fn relu_in_place<T: Elem>(v: &mut [T]) {
    let zero = T::zero();
    v.iter_mut()
        .for_each(|x| *x = if *x < zero { zero } else { *x });
}

/// The output gradient of a fused ReLU: `grad` where the output `y` is positive, 0 elsewhere
/// (the derivative at 0 is taken as 0, as PyTorch does; candle's own relu takes 1 there).
/// Without `relu`, `grad` itself.
pub(super) fn relu_grad(grad: &Tensor, y: &Tensor, relu: bool) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    if !relu {
        return Ok(grad);
    }
    grad.apply_op2_no_bwd(&y.contiguous()?, &ReluMask)
}

struct ReluMask;

pub(super) fn relu_mask<T: Elem>(
    gs: &CpuStorage,
    gl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (g, y) = (contiguous::<T>(gs, gl)?, contiguous::<T>(ys, yl)?);
    let zero = T::zero();
    let out = zip_map(g, y, |g, y| if y > zero { g } else { zero });
    Ok((T::to_cpu_storage_owned(out), gl.shape().clone()))
}

/// `f(a[i], b[i])` for every i, in parallel chunks.
fn zip_map<T: Elem>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    super::written(a.len(), |out| {
        out.par_chunks_mut(1 << 14)
            .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
            .for_each(|(o, (a, b))| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    o.write(f(a, b));
                }
            });
    })
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

/// `dst = src * src` elementwise, written into dst's storage (Path-SGD's squared network,
/// spec §7, takes its weights this way every step without allocating).
struct SquareInto;

pub(super) fn square_into_slices<T: Elem>(d: &mut [T], s: &[T]) {
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

/// `a + b` for two tensors of one shape, with `relu` then ReLU (a residual block's end: the
/// block's output plus its shortcut), in one pass; the backward sends the (masked) output
/// gradient to both.
struct Sum {
    relu: bool,
}

fn sum_fwd<T: Elem>(
    op: &Sum,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (a, b) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?);
    if a.len() != b.len() {
        candle_core::bail!("ecc add: {} and {} values", a.len(), b.len());
    }
    let zero = T::zero();
    let out = if op.relu {
        zip_map(a, b, |a, b| {
            let v = a + b;
            if v < zero {
                zero
            } else {
                v
            }
        })
    } else {
        zip_map(a, b, |a, b| a + b)
    };
    Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
}

impl CustomOp2 for Sum {
    fn name(&self) -> &'static str {
        if self.relu {
            "ecc-add-relu"
        } else {
            "ecc-add"
        }
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1.dtype(), sum_fwd, self, s1, l1, s2, l2)
    }
    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(grad, res, self.relu)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

impl TapeOp for Sum {
    fn tape_bwd(
        &self,
        a: &[Tensor],
        res: &Tensor,
        grad: &Tensor,
        _want: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (ga, gb) = self.bwd(&a[0], &a[1], res, grad)?;
        Ok(vec![ga, gb])
    }
}

/// `relu(a + b)`, `a` and `b` of the same shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    Ok(add_relu_rec(a, b, Rec::Graph)?.0)
}

fn same_dims(what: &str, a: &Tensor, b: &Tensor) -> crate::Result<()> {
    if a.dims() != b.dims() {
        return Err(crate::Error::shape(format!(
            "{what} of {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

/// [`add_relu`], recorded as `rec` says.
pub fn add_relu_rec(a: &Tensor, b: &Tensor, rec: Rec) -> crate::Result<Call> {
    same_dims("add-relu", a, b)?;
    Ok(apply2(
        &a.contiguous()?,
        &b.contiguous()?,
        Sum { relu: true },
        rec,
    )?)
}

/// `a + b` for two tensors of one shape, in parallel chunks, tracking nothing (the tape's
/// sum of two gradient contributions; candle's own add runs on one thread).
pub fn add(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    same_dims("add", a, b)?;
    Ok(a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &Sum { relu: false })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::testing::same_grads;
    use candle_core::Device;

    #[test]
    fn add_relu_matches_add_then_relu_with_gradients() {
        let dev = Device::Cpu;
        let vals = |k: usize| {
            (0..60)
                .map(|i| ((i * k % 23) as f32 - 11.0) / 7.0 + 0.013 * k as f32)
                .collect::<Vec<_>>()
        };
        // (No sum exactly 0, where candle's relu takes the derivative as 1 and ecc's as 0.)
        let a = Tensor::from_vec(vals(7), (3, 4, 5), &dev).unwrap();
        let b = Tensor::from_vec(vals(11), (3, 4, 5), &dev).unwrap();
        let fused = add_relu(&a, &b).unwrap();
        let plain = (&a + &b).unwrap().relu().unwrap();
        let d = (fused - plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        same_grads(
            |v| add_relu(&v[0], &v[1]).unwrap(),
            |v| (&v[0] + &v[1]).unwrap().relu().unwrap(),
            &[&a, &b],
        );
        assert!(add_relu(&a, &b.narrow(0, 0, 2).unwrap()).is_err());
    }
}
