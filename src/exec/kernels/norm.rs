//! BatchNormalization in training mode (spec §11): statistics of each channel over the batch
//! and spatial axes, y = gamma (x - mean) / sqrt(var + eps) + beta with the biased batch
//! variance, an optional ReLU fused after it (the common conv -> BN -> ReLU), and the exact
//! backward through the statistics:
//!   dx = gamma / sqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat)),
//!   dgamma = sum(g * xhat), dbeta = sum(g),
//! with g the output gradient (after the ReLU's mask) and xhat = (x - mean) / sqrt(var + eps).
//! Sums are taken per plane in eight partial sums of the element type, and over planes in
//! f64, per channel in parallel; the elementwise passes run in parallel over the (sample,
//! channel) planes.

use super::{apply3, contiguous, contiguous3, Call, Elem, Rec, TapeOp};
use crate::exec::cpu::vectorized;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A value in f64.
#[inline]
fn wide<T: Elem>(x: T) -> f64 {
    <T as candle_core::WithDType>::to_f64(x)
}

/// (samples, channels, plane size) of an N x C x ... tensor.
fn ncs(l: &Layout) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        candle_core::bail!("ecc batch norm: input of rank {} (needs >= 2)", d.len());
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Per channel: the f64 sum over all samples' planes of `f(channel, plane)`.
fn channel_sums<T: Elem>(
    x: &[T],
    (n, c, s): (usize, usize, usize),
    f: impl Fn(usize, &[T]) -> f64 + Sync,
) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ch| vectorized(|| (0..n).map(|i| f(ch, &x[(i * c + ch) * s..][..s])).sum()))
        .collect()
}

/// Independent partial sums in a plane's loops: a single running sum is one dependent add
/// per element; eight vectorize and pipeline. Each plane's total then goes into f64.
const LANES: usize = 8;

/// Σ f(v) over one plane: LANES partial sums in T, added in f64.
#[inline]
fn plane_sum<T: Elem>(v: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut acc = [T::zero(); LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| wide(f(x))).sum();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += f(c[j]);
        }
    }
    acc.iter().map(|&a| wide(a)).sum::<f64>() + tail
}

/// A new vector of `len` values written plane by plane (`s` values each, the last may be
/// shorter) by `f(plane, its values)`, the planes in parallel, each loop compiled wide
/// ([`wide`]); every value must be written (no zero fill first: the output of every
/// elementwise pass here is written whole).
fn planes<T: Elem>(
    len: usize,
    s: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(p, chunk)| vectorized(|| f(p, chunk)));
    // SAFETY: `f` wrote every value of every plane (its contract; the callers' loops run over
    // the whole chunk), so the first `len` values are initialized.
    unsafe { v.set_len(len) };
    v
}

/// The batch statistics of `x` (N x C x ...): per channel mean and biased variance, in f64
/// (two passes: the mean, then the squared deviations).
pub fn batch_stats(x: &Tensor) -> crate::Result<(Vec<f64>, Vec<f64>)> {
    fn stats<T: Elem>(s: &CpuStorage, l: &Layout) -> Result<(Vec<f64>, Vec<f64>)> {
        let x = contiguous::<T>(s, l)?;
        let dims = ncs(l)?;
        let m = (dims.0 * dims.2).max(1) as f64;
        let mean: Vec<f64> = channel_sums(x, dims, |_, v| plane_sum(v, |x| x))
            .into_iter()
            .map(|s| s / m)
            .collect();
        let var = channel_sums(x, dims, |ch, v| {
            let mu = T::from(mean[ch]).expect("a float");
            plane_sum(v, |x| (x - mu) * (x - mu))
        })
        .into_iter()
        .map(|s| s / m)
        .collect();
        Ok((mean, var))
    }
    let x = x.contiguous()?;
    let (s, l) = x.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        return Err(crate::Error::unsupported("batch norm runs on the CPU"));
    };
    let r = match s.dtype() {
        candle_core::DType::F32 => stats::<f32>(s, l),
        candle_core::DType::F64 => stats::<f64>(s, l),
        other => {
            return Err(crate::Error::unsupported(format!(
                "batch norm in {other:?} (f32 or f64)"
            )))
        }
    };
    Ok(r?)
}

/// The normalization with fixed batch statistics, as a candle op (x, gamma, beta) -> y.
struct BnTrain {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    relu: bool,
}

fn bn_fwd<T: Elem>(
    op: &BnTrain,
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
    bs: &CpuStorage,
    bl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (x, gamma, beta) = contiguous3::<T>((xs, xl), (gs, gl), (bs, bl))?;
    let (_, c, s) = ncs(xl)?;
    if gamma.len() != c || beta.len() != c {
        candle_core::bail!(
            "ecc batch norm: {c} channels, scale of {}, bias of {}",
            gamma.len(),
            beta.len()
        );
    }
    let cast = |v: f64| T::from(v).expect("a float");
    // y = k x + b per channel, k = gamma / std, b = beta - k mean.
    let k: Vec<T> = (0..c)
        .map(|ch| cast(wide(gamma[ch]) * op.inv_std[ch]))
        .collect();
    let b: Vec<T> = (0..c)
        .map(|ch| {
            let kf = wide(gamma[ch]) * op.inv_std[ch];
            cast(wide(beta[ch]) - kf * op.mean[ch])
        })
        .collect();
    let y = planes(x.len(), s, |p, yp| {
        let (k, b) = (k[p % c], b[p % c]);
        let xp = &x[p * s..][..yp.len()];
        affine(true, op.relu, k, b, xp, yp);
    });
    Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
}

/// The backward's channel sums, (grad, x, y) -> (2, C): sum(g) and sum(g * xhat), g masked
/// by the fused ReLU.
struct BnSums<'a>(&'a BnTrain);
/// The input gradient, (grad, x, y) -> dx, from those sums.
struct BnDx<'a> {
    op: &'a BnTrain,
    gamma: Vec<f64>,
    sums: Vec<f64>,
}

/// The output gradient after the fused ReLU's mask.
#[inline]
fn masked<T: Elem>(relu: bool, g: T, y: T) -> T {
    // The ReLU passes where y > 0 (its derivative at 0 taken as 0, as PyTorch does).
    if !relu || y > T::zero() {
        g
    } else {
        T::zero()
    }
}

/// Add Σ g and Σ g (x - mu) over one plane to `sg`, `sgx`, g masked by the fused ReLU
/// (`relu`: g where y > 0, else 0): the values in LANES partial sums (see `plane_sum`), the
/// tail in f64 first, then the partial sums.
#[inline(always)]
fn plane_sums<T: Elem>(g: &[T], x: &[T], y: &[T], mu: T, relu: bool, sg: &mut f64, sgx: &mut f64) {
    let body = g.len() / LANES * LANES;
    for ((&g, &x), &y) in g[body..].iter().zip(&x[body..]).zip(&y[body..]) {
        let gm = masked(relu, g, y);
        *sg += wide(gm);
        *sgx += wide(gm * (x - mu));
    }
    let (ag, agx) = match lanes_avx2(relu, g, x, y, mu) {
        Some(lanes) => lanes,
        None => lane_sums(g, x, y, mu, |g, y| masked(relu, g, y)),
    };
    *sg += ag.iter().map(|&a| wide(a)).sum::<f64>();
    *sgx += agx.iter().map(|&a| wide(a)).sum::<f64>();
}

/// The LANES partial sums of [`plane_sums`] over the whole chunks of LANES values.
#[inline(always)]
fn lane_sums<T: Elem>(
    g: &[T],
    x: &[T],
    y: &[T],
    mu: T,
    mask: impl Fn(T, T) -> T,
) -> ([T; LANES], [T; LANES]) {
    let (mut ag, mut agx) = ([T::zero(); LANES], [T::zero(); LANES]);
    let chunks = g
        .chunks_exact(LANES)
        .zip(x.chunks_exact(LANES))
        .zip(y.chunks_exact(LANES));
    for ((g, x), y) in chunks {
        for j in 0..LANES {
            let gm = mask(g[j], y[j]);
            ag[j] += gm;
            agx[j] += gm * (x[j] - mu);
        }
    }
    (ag, agx)
}

/// Whether T is f32 and the CPU has AVX2: the BN sums and elementwise passes below then run
/// with AVX2 intrinsics.
fn f32_avx2<T: Elem>() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        return std::arch::is_x86_feature_detected!("avx2");
    }
    false
}

/// Reinterpret a slice of T as f32; T must be f32 ([`f32_avx2`]).
#[cfg(target_arch = "x86_64")]
fn as_f32<T: Elem>(v: &[T]) -> &[f32] {
    assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>());
    // SAFETY: T is f32 (asserted).
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) }
}

/// Reinterpret an output plane of T as f32; T must be f32 ([`f32_avx2`]).
#[cfg(target_arch = "x86_64")]
fn as_f32_out<T: Elem>(v: &mut [std::mem::MaybeUninit<T>]) -> &mut [f32] {
    assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>());
    // SAFETY: T is f32 (asserted) and MaybeUninit<f32> has f32's layout; the values are
    // only written.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len()) }
}

/// [`lane_sums`] for f32 on a CPU with AVX2, written with its intrinsics: the same IEEE
/// operations on the same lanes in the same order (the ReLU mask is an and with the
/// comparison, which is the select; no fused multiply-add), so the same sums bit for bit.
/// The compiler's own code for the masked loop loaded g behind a branch per lane (to skip
/// the loads the mask drops), which made the sum ten times as slow as without the mask:
/// ~17% of a narrow PlainNet-20 training step; and as a closure the loop was compiled for
/// the baseline CPU (4 wide). `None` for f64 or without AVX2.
#[inline(always)]
fn lanes_avx2<T: Elem>(
    relu: bool,
    g: &[T],
    x: &[T],
    y: &[T],
    mu: T,
) -> Option<([T; LANES], [T; LANES])> {
    #[cfg(target_arch = "x86_64")]
    if LANES == 8 && f32_avx2::<T>() {
        assert!(x.len() == g.len() && y.len() == g.len());
        let mu = mu.to_f32().expect("an f32");
        // SAFETY: the CPU has AVX2 (checked above); the three slices have one length.
        let (ag, agx) = unsafe { lanes_f32_avx2(relu, as_f32(g), as_f32(x), as_f32(y), mu) };
        let back = |a: [f32; 8]| a.map(|v| T::from(v).expect("a float"));
        return Some((back(ag), back(agx)));
    }
    let _ = (relu, g, x, y, mu);
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_f32_avx2(
    relu: bool,
    g: &[f32],
    x: &[f32],
    y: &[f32],
    mu: f32,
) -> ([f32; 8], [f32; 8]) {
    use std::arch::x86_64::*;
    let (mut ag, mut agx) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (m, zero) = (_mm256_set1_ps(mu), _mm256_setzero_ps());
    let mut k = 0;
    while k + 8 <= g.len() {
        // SAFETY: k + 8 <= len of each slice (equal lengths, the caller's assert).
        let (gv, xv, yv) = unsafe {
            (
                _mm256_loadu_ps(g.as_ptr().add(k)),
                _mm256_loadu_ps(x.as_ptr().add(k)),
                _mm256_loadu_ps(y.as_ptr().add(k)),
            )
        };
        let gm = if relu {
            _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero))
        } else {
            gv
        };
        ag = _mm256_add_ps(ag, gm);
        agx = _mm256_add_ps(agx, _mm256_mul_ps(gm, _mm256_sub_ps(xv, m)));
        k += 8;
    }
    let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
    // SAFETY: each array holds 8 f32.
    unsafe {
        _mm256_storeu_ps(a.as_mut_ptr(), ag);
        _mm256_storeu_ps(b.as_mut_ptr(), agx);
    }
    (a, b)
}

/// The forward pass over one plane: `out = k x + b`, then the fused ReLU (`v < 0 ? 0 : v`).
/// With `fast`, for f32 on a CPU with AVX2, written with its intrinsics
/// ([`affine_f32_avx2`]): the same IEEE operations (a multiply, then an add; no fused
/// multiply-add), so the same bits, 8 wide. The compiler's code for the portable loop was
/// 4-wide SSE: handed to `planes` as a closure, it is not inlined into `vectorized`'s AVX2
/// copy (with the backward's pass, 14% of a narrow PlainNet-32 training step on an AVX2
/// machine). `fast` is off only to test the two against each other.
#[inline(always)]
fn affine<T: Elem>(
    fast: bool,
    relu: bool,
    k: T,
    b: T,
    x: &[T],
    out: &mut [std::mem::MaybeUninit<T>],
) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if fast && f32_avx2::<T>() {
        let (k, b) = (k.to_f32().expect("f32"), b.to_f32().expect("f32"));
        // SAFETY: the CPU has AVX2 (checked above); the two slices have one length.
        unsafe { affine_f32_avx2(relu, k, b, as_f32(x), as_f32_out(out)) };
        return;
    }
    let _ = fast;
    let zero = T::zero();
    if relu {
        for (y, &x) in out.iter_mut().zip(x) {
            let v = k * x + b;
            y.write(if v < zero { zero } else { v });
        }
    } else {
        for (y, &x) in out.iter_mut().zip(x) {
            y.write(k * x + b);
        }
    }
}

/// `affine` for f32 with AVX2 intrinsics; the ReLU as `max(0, v)` as MAXPS takes it (its
/// second operand where the first is not greater), so NaN and -0 pass as in `v < 0 ? 0 : v`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn affine_f32_avx2(relu: bool, k: f32, b: f32, x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (kv, bv, zero) = (_mm256_set1_ps(k), _mm256_set1_ps(b), _mm256_setzero_ps());
    let mut i = 0;
    while i + 8 <= x.len() {
        // SAFETY: i + 8 <= len of both slices (equal lengths).
        unsafe {
            let v = _mm256_add_ps(_mm256_mul_ps(kv, _mm256_loadu_ps(x.as_ptr().add(i))), bv);
            let v = if relu { _mm256_max_ps(zero, v) } else { v };
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for (o, &x) in out[i..].iter_mut().zip(&x[i..]) {
        let v = k * x + b;
        *o = if relu && v < 0.0 { 0.0 } else { v };
    }
}

/// The input gradient over one plane: `out = a g' + b x + d` with g' = g masked by the
/// fused ReLU (g where y > 0, else 0). With `fast`, for f32 on a CPU with AVX2, written with
/// its intrinsics ([`dx_f32_avx2`]): the same operations in the same order ((a g' + b x) +
/// d; the mask an and with the comparison), so the same bits; the portable loop compiled to
/// scalar code with a branch per value (see [`lanes_f32_avx2`]). `fast` is off only to test
/// the two against each other.
#[inline(always)]
fn dx_plane<T: Elem>(
    fast: bool,
    relu: bool,
    (a, b, d): (T, T, T),
    [g, x, y]: [&[T]; 3],
    out: &mut [std::mem::MaybeUninit<T>],
) {
    assert!(g.len() == out.len() && x.len() == out.len() && y.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if fast && f32_avx2::<T>() {
        let f = |v: T| v.to_f32().expect("f32");
        let c = [f(a), f(b), f(d)];
        // SAFETY: the CPU has AVX2 (checked above); the four slices have one length.
        unsafe { dx_f32_avx2(relu, c, as_f32(g), as_f32(x), as_f32(y), as_f32_out(out)) };
        return;
    }
    let _ = fast;
    for (((dx, &g), &x), &y) in out.iter_mut().zip(g).zip(x).zip(y) {
        dx.write(a * masked(relu, g, y) + b * x + d);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dx_f32_avx2(relu: bool, c: [f32; 3], g: &[f32], x: &[f32], y: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let [a, b, d] = c;
    let (av, bv, dv, zero) = (
        _mm256_set1_ps(a),
        _mm256_set1_ps(b),
        _mm256_set1_ps(d),
        _mm256_setzero_ps(),
    );
    let mut i = 0;
    while i + 8 <= g.len() {
        // SAFETY: i + 8 <= len of each slice (equal lengths).
        unsafe {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let gm = if relu {
                let yv = _mm256_loadu_ps(y.as_ptr().add(i));
                _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero))
            } else {
                gv
            };
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let v = _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(av, gm), _mm256_mul_ps(bv, xv)),
                dv,
            );
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        }
        i += 8;
    }
    for (k, o) in out.iter_mut().enumerate().skip(i) {
        *o = a * masked(relu, g[k], y[k]) + b * x[k] + d;
    }
}

/// Σ g and Σ g xhat of channel `ch` (g masked by the fused ReLU).
#[inline(always)]
fn channel_sums_masked<T: Elem>(
    g: &[T],
    x: &[T],
    y: &[T],
    (n, c, s): (usize, usize, usize),
    ch: usize,
    op: &BnTrain,
) -> (f64, f64) {
    let mu = T::from(op.mean[ch]).expect("a float");
    let (mut sg, mut sgx) = (0f64, 0f64);
    for i in 0..n {
        let o = (i * c + ch) * s;
        let (g, x, y) = (&g[o..o + s], &x[o..o + s], &y[o..o + s]);
        plane_sums(g, x, y, mu, op.relu, &mut sg, &mut sgx);
    }
    (sg, sgx * op.inv_std[ch])
}

fn bn_sums<T: Elem>(
    op: &BnSums,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (g, x, y) = contiguous3::<T>((gs, gl), (xs, xl), (ys, yl))?;
    let op = op.0;
    let (n, c, s) = ncs(xl)?;
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| vectorized(|| channel_sums_masked(g, x, y, (n, c, s), ch, op)))
        .collect();
    let out: Vec<T> = per
        .iter()
        .map(|p| p.0)
        .chain(per.iter().map(|p| p.1))
        .map(|v| T::from(v).expect("a float"))
        .collect();
    Ok((T::to_cpu_storage_owned(out), Shape::from((2, c))))
}

fn bn_dx<T: Elem>(
    op: &BnDx,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (g, x, y) = contiguous3::<T>((gs, gl), (xs, xl), (ys, yl))?;
    let (n, c, s) = ncs(xl)?;
    let m = (n * s).max(1) as f64;
    let bn = op.op;
    // dx = a * g + b * x + d per channel, with a = gamma inv_std, mean_g = sum_g / m,
    // mean_gx = sum_gx / m: dx = a (g - mean_g - (x - mean) inv_std mean_gx).
    let cast = |v: f64| T::from(v).expect("a float");
    let coef: Vec<(T, T, T)> = (0..c)
        .map(|ch| {
            let a = op.gamma[ch] * bn.inv_std[ch];
            let (mg, mgx) = (op.sums[ch] / m, op.sums[c + ch] / m);
            let b = -a * bn.inv_std[ch] * mgx;
            let d = -a * mg + a * bn.inv_std[ch] * mgx * bn.mean[ch];
            (cast(a), cast(b), cast(d))
        })
        .collect();
    let dx = planes(x.len(), s, |p, dp| {
        let (a, b, d) = coef[p % c];
        let o = p * s;
        let (gp, xp, yp) = (&g[o..o + s], &x[o..o + s], &y[o..o + s]);
        dx_plane(true, bn.relu, (a, b, d), [gp, xp, yp], dp);
    });
    Ok((T::to_cpu_storage_owned(dx), xl.shape().clone()))
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "ecc-batch-norm-train"
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
        by_dtype!(s1.dtype(), bn_fwd, self, s1, l1, s2, l2, s3, l3)
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad, x, y) = (grad.contiguous()?, x.contiguous()?, res.contiguous()?);
        let sums_t = grad.apply_op3_no_bwd(&x, &y, &BnSums(self))?;
        let c = sums_t.dims()[1];
        let dbeta = sums_t.get(0)?.reshape(beta.shape())?;
        let dgamma = sums_t.get(1)?.reshape(gamma.shape())?;
        let sums = sums_t
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let gamma_v = gamma
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        debug_assert_eq!(gamma_v.len(), c);
        let dx = grad.apply_op3_no_bwd(
            &x,
            &y,
            &BnDx {
                op: self,
                gamma: gamma_v,
                sums,
            },
        )?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl TapeOp for BnTrain {
    fn tape_bwd(
        &self,
        a: &[Tensor],
        res: &Tensor,
        grad: &Tensor,
        _want: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (dx, dgamma, dbeta) = self.bwd(&a[0], &a[1], &a[2], res, grad)?;
        Ok(vec![dx, dgamma, dbeta])
    }
}

op3!(BnSums<'_>, "ecc-batch-norm-sums", bn_sums);

op3!(BnDx<'_>, "ecc-batch-norm-dx", bn_dx);

/// BatchNormalization in training mode on `x` (N x C x ...) with scale `gamma` and bias
/// `beta` (C values each), a ReLU fused after it with `relu`. Returns the output and the
/// batch statistics (mean and biased variance per channel, f64) for the running update.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    epsilon: f64,
    relu: bool,
) -> crate::Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let ((y, _), mean, var) = batch_norm_train_rec(x, gamma, beta, epsilon, relu, Rec::Graph)?;
    Ok((y, mean, var))
}

/// [`batch_norm_train`], recorded as `rec` says.
pub fn batch_norm_train_rec(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    epsilon: f64,
    relu: bool,
    rec: Rec,
) -> crate::Result<(Call, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let (mean, var) = batch_stats(&x)?;
    let inv_std = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    let op = BnTrain {
        mean: mean.clone(),
        inv_std,
        relu,
    };
    let call = apply3(
        &x,
        &gamma.flatten_all()?.contiguous()?,
        &beta.flatten_all()?.contiguous()?,
        op,
        rec,
    )?;
    Ok((call, mean, var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn values(n: usize, k: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * k % 29) as f64 - 14.0) / 7.0 + 0.01 * i as f64)
            .collect()
    }

    /// Gradients of sum(BN(x) * r) with respect to x, gamma and beta (f64, through the batch
    /// statistics) against central differences, with and without the fused ReLU, on 4-D and
    /// 2-D inputs (spec §11).
    #[test]
    fn batch_norm_gradients_match_finite_differences_f64() {
        let dev = Device::Cpu;
        for dims in [vec![3usize, 4, 2, 3], vec![5, 3]] {
            let c = dims[1];
            let n: usize = dims.iter().product();
            for relu in [false, true] {
                let x0 = values(n, 7);
                let g0: Vec<f64> = (0..c).map(|i| 0.5 + 0.3 * i as f64).collect();
                let b0: Vec<f64> = (0..c).map(|i| 0.2 * i as f64 - 0.1).collect();
                let r = Tensor::from_vec(values(n, 11), dims.as_slice(), &dev).unwrap();
                let loss = |x: &Tensor, g: &Tensor, b: &Tensor| -> Tensor {
                    let (y, _, _) = batch_norm_train(x, g, b, 1e-5, relu).unwrap();
                    (y * &r).unwrap().sum_all().unwrap()
                };
                let t = |v: &[f64], d: &[usize]| Tensor::from_vec(v.to_vec(), d, &dev).unwrap();
                let (xv, gv, bv) = (
                    Var::from_tensor(&t(&x0, &dims)).unwrap(),
                    Var::from_tensor(&t(&g0, &[c])).unwrap(),
                    Var::from_tensor(&t(&b0, &[c])).unwrap(),
                );
                let grads = loss(xv.as_tensor(), gv.as_tensor(), bv.as_tensor())
                    .backward()
                    .unwrap();
                let auto = |v: &Var| {
                    grads
                        .get(v.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                let (ax, ag, ab) = (auto(&xv), auto(&gv), auto(&bv));
                let h = 1e-6;
                let fd = |which: usize, i: usize| {
                    let at = |d: f64| {
                        let (mut x, mut g, mut b) = (x0.clone(), g0.clone(), b0.clone());
                        [&mut x, &mut g, &mut b][which][i] += d;
                        loss(&t(&x, &dims), &t(&g, &[c]), &t(&b, &[c]))
                            .to_scalar::<f64>()
                            .unwrap()
                    };
                    (at(h) - at(-h)) / (2.0 * h)
                };
                for (which, auto) in [(0, &ax), (1, &ag), (2, &ab)] {
                    for (i, &a) in auto.iter().enumerate() {
                        let f = fd(which, i);
                        assert!(
                            (a - f).abs() <= 1e-6 * (1.0 + f.abs()),
                            "{dims:?} relu={relu} input {which}[{i}]: autograd {a} vs fd {f}"
                        );
                    }
                }
                // The output: zero mean and unit variance per channel before gamma and beta.
                let (y, mean, var) = batch_norm_train(
                    &t(&x0, &dims),
                    &t(&vec![1.0; c], &[c]),
                    &t(&vec![0.0; c], &[c]),
                    0.0,
                    false,
                )
                .unwrap();
                let (m2, v2) = batch_stats(&y).unwrap();
                assert!(m2.iter().all(|m| m.abs() < 1e-12), "{m2:?}");
                assert!(v2.iter().all(|v| (v - 1.0).abs() < 1e-9), "{v2:?}");
                assert_eq!((mean.len(), var.len()), (c, c));
            }
        }
        // f32 runs the same kernel.
        let x = Tensor::from_vec(values(24, 5), (2, 3, 4), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let g = Tensor::ones(3, DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let (y, _, _) = batch_norm_train(&x, &g, &b, 1e-5, true).unwrap();
        assert!(y
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|&v| v >= 0.0));
    }

    /// Outputs of a fused ReLU: random, a quarter exactly 0 and some -0.
    fn relu_outputs(rng: &mut impl rand::Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match i % 8 {
                0 | 1 => 0.0,
                2 => -0.0,
                _ => rng.gen_range(-1.0f32..1.0).max(0.0),
            })
            .collect()
    }

    /// The AVX2 sums, with and without the ReLU mask, are the portable loop's bit for bit
    /// (random values, a quarter of the outputs exactly 0 and some -0, as a fused ReLU
    /// leaves them).
    #[test]
    fn avx2_sums_are_the_portable_loops_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for len in [8, 24, 784, 1000] {
            let g: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let x: Vec<f32> = (0..len).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let y = relu_outputs(&mut rng, len);
            let mu = 0.3f32;
            for relu in [true, false] {
                let portable = lane_sums(&g, &x, &y, mu, |g, y| masked(relu, g, y));
                match lanes_avx2(relu, &g, &x, &y, mu) {
                    Some(fast) => {
                        let bits = |a: [f32; LANES]| a.map(f32::to_bits);
                        assert_eq!(bits(fast.0), bits(portable.0), "len {len} relu {relu}");
                        assert_eq!(bits(fast.1), bits(portable.1), "len {len} relu {relu}");
                    }
                    None => eprintln!("no AVX2 here: only the portable loop runs"),
                }
            }
            let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            assert!(lanes_avx2(true, &g64, &g64, &g64, 0.0).is_none());
        }
    }

    /// The AVX2 elementwise passes (forward with and without the ReLU, input gradient with
    /// and without its mask) write the portable loops' bits, tails included; f64 is left to
    /// the portable loops.
    #[test]
    fn avx2_passes_are_the_portable_loops_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        use std::mem::MaybeUninit;
        if !f32_avx2::<f32>() {
            eprintln!("no AVX2 here: only the portable loops run");
        }
        assert!(!f32_avx2::<f64>());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // The bits a pass writes over `len` values, fast and portable.
        let run = |len: usize, f: &dyn Fn(bool, &mut [MaybeUninit<f32>])| {
            [true, false].map(|fast| {
                let mut out = vec![MaybeUninit::new(f32::NAN); len];
                f(fast, &mut out);
                // SAFETY: every pass writes its whole output.
                out.iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            })
        };
        for len in [5, 8, 27, 784, 1001] {
            let mut v = |lo: f32, hi: f32| -> Vec<f32> {
                (0..len).map(|_| rng.gen_range(lo..hi)).collect()
            };
            let (g, mut x) = (v(-1.0, 1.0), v(-3.0, 3.0));
            // Values whose k x + b is exactly 0 or -0 and a NaN: the ReLU's edge cases.
            x[0] = 0.0;
            x[1] = -0.0;
            x[2] = f32::NAN;
            let y = relu_outputs(&mut rng, len);
            for relu in [true, false] {
                // b = ±0 keeps k·(±0) + b at ±0: both zeros meet the ReLU.
                for (k, b) in [(1.7f32, 0.0f32), (1.7, -0.0), (-0.6, 0.25)] {
                    let [fast, portable] = run(len, &|f, o| affine(f, relu, k, b, &x, o));
                    assert_eq!(fast, portable, "affine len {len} relu {relu} b {b}");
                }
                let c = (0.9f32, -0.31f32, 0.05f32);
                let [fast, portable] = run(len, &|f, o| dx_plane(f, relu, c, [&g, &x, &y], o));
                assert_eq!(fast, portable, "dx len {len} relu {relu}");
            }
        }
    }
}
