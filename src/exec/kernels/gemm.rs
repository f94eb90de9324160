//! Matmuls on slices through the `gemm` crate (the one candle uses), and the per-sample
//! parallel loop of the layer kernels.

use super::Elem;

/// A matrix view for [`gemm`]: pointer, rows, columns, row and column strides (as read).
#[derive(Clone, Copy)]
pub(super) struct Mat<T> {
    ptr: *const T,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl<T> Mat<T> {
    /// A row-major `rows x cols` matrix at the start of `s`.
    pub(super) fn of(s: &[T], rows: usize, cols: usize) -> Self {
        Self::strided(s, rows, cols, cols as isize, 1)
    }
    /// A matrix at the start of `s` whose entry (i, j) is `s[i * rs + j * cs]`.
    pub(super) fn strided(s: &[T], rows: usize, cols: usize, rs: isize, cs: isize) -> Self {
        assert!(rs >= 0 && cs >= 0, "gemm: negative strides");
        let last = (rows.max(1) - 1) * rs as usize + (cols.max(1) - 1) * cs as usize;
        assert!(
            rows == 0 || cols == 0 || last < s.len(),
            "gemm: view out of bounds"
        );
        Mat {
            ptr: s.as_ptr(),
            rows,
            cols,
            rs,
            cs,
        }
    }
    /// The transpose.
    pub(super) fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// (rows, cols, row stride, column stride).
    pub(super) fn view(&self) -> (usize, usize, isize, isize) {
        (self.rows, self.cols, self.rs, self.cs)
    }
}

/// Matmuls with fewer multiply-adds than this run on one thread even when threads are
/// allowed: below it, handing work to the other thread costs more than it saves.
pub(super) const PAR_GEMM: usize = 1 << 20;

/// `dst = a * b` (or `dst += a * b` with `accumulate`), dst row-major and contiguous.
pub(super) fn gemm<T: Elem>(dst: &mut [T], a: Mat<T>, b: Mat<T>, accumulate: bool, threads: bool) {
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

/// Run `f(index, item, threads, scratch)` over `items`: on every thread in contiguous runs
/// of equal length (one run per thread), each thread with one `scratch`-long buffer that it
/// reuses (rayon's `for_each_init` would allocate one per split job); the items left over
/// when their number is not a multiple of the threads' (and all of them with a single run)
/// then in turn, `f` told it may use threads itself. (Unequal runs left a thread idle: the
/// 9 chunks of a ResNet-20 stage-3 convolution, batch 128, ran as 5 and 4.) What `f`
/// computes must not depend on `threads` (the matmuls split their outputs, never the sums).
pub(super) fn on_threads<I: Send, T: Elem>(
    items: Vec<I>,
    scratch: usize,
    f: impl Fn(usize, I, bool, &mut Vec<T>) + Sync,
) {
    use rayon::prelude::*;
    let n = items.len();
    let runs = rayon::current_num_threads().min(n).max(1);
    let mut items: Vec<Option<(usize, I)>> = items.into_iter().enumerate().map(Some).collect();
    let even = if runs == 1 { 0 } else { n / runs * runs };
    let (shared, left) = items.split_at_mut(even);
    if even > 0 {
        shared.par_chunks_mut(even / runs).for_each(|run| {
            let mut buf = vec![T::zero(); scratch];
            for slot in run.iter_mut() {
                if let Some((i, it)) = slot.take() {
                    f(i, it, false, &mut buf);
                }
            }
        });
    }
    if !left.is_empty() {
        let mut buf = vec![T::zero(); scratch];
        for slot in left.iter_mut() {
            if let Some((i, it)) = slot.take() {
                f(i, it, true, &mut buf);
            }
        }
    }
}

/// Run `f(sample index, per-sample output, threads, scratch)` over the samples (`len` values
/// of `out` each), see [`on_threads`].
pub(super) fn per_sample<T: Elem>(
    out: &mut [T],
    len: usize,
    scratch: usize,
    f: impl Fn(usize, &mut [T], bool, &mut Vec<T>) + Sync,
) {
    on_threads(out.chunks_mut(len.max(1)).collect(), scratch, f);
}
