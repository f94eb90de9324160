//! Elementwise kernels: ReLU and its gradient mask (as selects), squaring in place.

use super::{contiguous, Elem};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// half the time, and a select vectorizes. NaN stays NaN.
pub(super) fn relu_in_place<T: Elem>(v: &mut [T]) {
    let zero = T::zero();
    v.iter_mut()
        .for_each(|x| *x = if *x < zero { zero } else { *x });
}

/// The output gradient of a fused ReLU: `grad` where the output `y` is positive, 0 elsewhere
/// (the derivative at 0 is taken as 0, as candle's relu does). Without `relu`, `grad` itself.
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
