//! ecc's CPU kernels, as candle custom ops with backward passes (candle's autograd stitches
//! them together), one file per kernel family. f32 for training, f64 for numerical checks.

use candle_core::{CpuStorage, Layout, Result};

/// The element types the kernels run in: f32 (training) and f64 (numerical checks).
pub(crate) trait Elem:
    candle_core::WithDType + num_traits::Float + std::ops::AddAssign + std::ops::DivAssign + 'static
{
}
impl Elem for f32 {}
impl Elem for f64 {}

pub(crate) fn contiguous<'a, T: Elem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("ecc kernel: input is not contiguous"),
    }
}

/// Write `src` into the uninitialized `dst` (same length) and return it as initialized.
pub(crate) fn write_init<'a, T: Copy>(
    dst: &'a mut [std::mem::MaybeUninit<T>],
    src: &[T],
) -> &'a mut [T] {
    assert_eq!(dst.len(), src.len(), "write_init: lengths");
    // SAFETY: MaybeUninit<T> has T's layout; every value of dst is written from src before
    // dst is viewed as initialized, and the two do not overlap (dst is borrowed mutably).
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<T>(), src.len());
        std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<T>(), dst.len())
    }
}

/// A new vector of `len` values that `f` writes whole, every value (it is not filled with
/// zeros first: the fill was a pass over the memory on one thread, the other one idle,
/// ~2% of a ResNet-20 training step for the convolutions' and ReLU masks' outputs).
pub(crate) fn written<T: Copy>(
    len: usize,
    f: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    f(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `f` wrote every one of the first `len` values (its contract).
    unsafe { v.set_len(len) };
    v
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

/// Contiguous slices of three storages, one element type.
type Slices3<'a, T> = (&'a [T], &'a [T], &'a [T]);
pub(crate) fn contiguous3<'a, T: Elem>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<Slices3<'a, T>> {
    Ok((
        contiguous::<T>(s1, l1)?,
        contiguous::<T>(s2, l2)?,
        contiguous::<T>(s3, l3)?,
    ))
}

/// A candle op of three inputs without a backward pass: `$f(self, s1, l1, s2, l2, s3, l3)`.
macro_rules! op3 {
    ($ty:ty, $name:literal, $f:ident) => {
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
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
                by_dtype!(s1.dtype(), $f, self, s1, l1, s2, l2, s3, l3)
            }
        }
    };
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

mod conv;
mod conv_s1;
mod dense;
mod elementwise;
mod gemm;
mod norm;
mod pool;
mod resize;
#[cfg(test)]
mod testing;
pub mod update;
mod window;

pub use conv::{conv, conv_transpose};
pub use dense::dense;
pub use elementwise::{add_relu, square_into};
pub use norm::batch_norm_train;
pub use pool::{average_pool, max_pool};
pub use resize::resize;
pub use window::Window;
