//! ecc's CPU kernels, as candle custom ops with backward passes, one file per kernel family.
//! f32 for training, f64 for numerical checks. A call is recorded in candle's graph (its
//! autograd stitches the passes together) or, with [`Rec::Tape`], hands its backward pass
//! to the executor's tape (`exec::tape`), which runs the same functions.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Tensor};

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
/// `$fwd(op, x, w, bias)` computes the output; the type provides `grads(want_dx, x, w, y,
/// grad)` -> (input gradient if wanted, weight gradient, output gradient after the fused
/// ReLU) and `bias_grad(output gradient, b)`. Also the op's [`TapeOp`].
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
                let (dx, dw, _) = self.grads(x.track_op(), x, w, res, grad)?;
                Ok((dx, Some(dw)))
            }
        }

        impl $crate::exec::kernels::TapeOp for $ty {
            fn tape_bwd(
                &self,
                args: &[Tensor],
                res: &Tensor,
                grad: &Tensor,
                want: &[bool],
            ) -> Result<Vec<Option<Tensor>>> {
                let (dx, dw, g) = self.grads(want[0], &args[0], &args[1], res, grad)?;
                let mut out = vec![dx, Some(dw)];
                if let Some(b) = args.get(2) {
                    out.push(Some(self.bias_grad(&g, b)?));
                }
                Ok(out)
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
                let (dx, dw, g) = self.grads(x.track_op(), x, w, res, grad)?;
                Ok((dx, Some(dw), Some(self.bias_grad(&g, b)?)))
            }
        }
    };
}

/// How a kernel call keeps what its backward pass needs: in candle's graph (the output
/// tracks its inputs, and `backward()` on a loss runs the pass), or as a [`Recorded`] for
/// the executor's tape (`exec::tape`; the output tracks nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rec {
    Graph,
    Tape,
}

/// The backward pass of one of the custom ops here, on its inputs `args` and output `res`:
/// what its candle `bwd` computes (both call the same functions).
pub(crate) trait TapeOp: Send + Sync + 'static {
    fn tape_bwd(
        &self,
        args: &[Tensor],
        res: &Tensor,
        grad: &Tensor,
        want: &[bool],
    ) -> Result<Vec<Option<Tensor>>>;
}

/// A kernel call kept for the executor's tape: the op, its inputs and its output.
pub struct Recorded {
    op: Box<dyn TapeOp>,
    args: Vec<Tensor>,
    res: Tensor,
}

impl Recorded {
    fn new<O: TapeOp>(op: O, args: &[&Tensor], res: &Tensor) -> Option<Recorded> {
        Some(Recorded {
            op: Box::new(op),
            args: args.iter().map(|&t| t.clone()).collect(),
            res: res.clone(),
        })
    }

    /// The gradients of the call's inputs, in order, from its output's gradient `grad`;
    /// where `want[i]` is false (a graph input, which needs none) it may give `None`.
    pub fn backward(&self, grad: &Tensor, want: &[bool]) -> Result<Vec<Option<Tensor>>> {
        self.op.tape_bwd(&self.args, &self.res, grad, want)
    }
}

/// A kernel call's output, and its backward pass when recorded with [`Rec::Tape`].
pub type Call = (Tensor, Option<Recorded>);

/// `x.apply_op1(op)` recorded as `rec` says.
fn apply1<O: candle_core::CustomOp1 + TapeOp>(x: &Tensor, op: O, rec: Rec) -> Result<Call> {
    Ok(match rec {
        Rec::Graph => (x.apply_op1(op)?, None),
        Rec::Tape => {
            let y = x.apply_op1_no_bwd(&op)?;
            let back = Recorded::new(op, &[x], &y);
            (y, back)
        }
    })
}

/// `a.apply_op2(b, op)` recorded as `rec` says.
fn apply2<O: CustomOp2 + TapeOp>(a: &Tensor, b: &Tensor, op: O, rec: Rec) -> Result<Call> {
    Ok(match rec {
        Rec::Graph => (a.apply_op2(b, op)?, None),
        Rec::Tape => {
            let y = a.apply_op2_no_bwd(b, &op)?;
            let back = Recorded::new(op, &[a, b], &y);
            (y, back)
        }
    })
}

/// `a.apply_op3(b, c, op)` recorded as `rec` says.
fn apply3<O: candle_core::CustomOp3 + TapeOp>(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: O,
    rec: Rec,
) -> Result<Call> {
    Ok(match rec {
        Rec::Graph => (a.apply_op3(b, c, op)?, None),
        Rec::Tape => {
            let y = a.apply_op3_no_bwd(b, c, &op)?;
            let back = Recorded::new(op, &[a, b, c], &y);
            (y, back)
        }
    })
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

pub use conv::{conv, conv_rec, conv_transpose, conv_transpose_rec};
pub use dense::{dense, dense_rec};
pub use elementwise::{add, add_relu, add_relu_rec, square_into};
pub use norm::{batch_norm_train, batch_norm_train_rec};
pub use pool::{average_pool, max_pool, pool_rec};
pub use resize::resize;
pub use window::Window;
