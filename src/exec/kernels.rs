//! CPU kernels that candle lacks in the form ONNX needs: N-d (1 to 3 spatial axes)
//! im2col for convolutions with any pads, strides, dilations and groups, and max/average
//! pooling with pads, dilations and ceil mode. Each is a candle custom op with its backward
//! pass, so autograd flows through it.

use crate::ir::{conv_out_len, ConvAttrs, PoolAttrs};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Window geometry, with the spatial axes padded to 3 (leading axes of size 1).
#[derive(Debug, Clone)]
pub struct Window {
    pub n: usize,
    pub c: usize,
    pub ns: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub pad_end: [usize; 3],
    pub dil: [usize; 3],
    pub out: [usize; 3],
}

impl Window {
    fn new(
        dims: &[usize],
        kernel: &[usize],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
        ceil: bool,
    ) -> crate::Result<Self> {
        let ns = kernel.len();
        if !(1..=3).contains(&ns) || dims.len() != ns + 2 {
            return Err(crate::Error::unsupported(format!(
                "{ns}-D windows (ecc runs 1-D to 3-D)"
            )));
        }
        let mut w = Window {
            n: dims[0],
            c: dims[1],
            ns,
            input: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            pad: [0; 3],
            pad_end: [0; 3],
            dil: [1; 3],
            out: [1; 3],
        };
        let off = 3 - ns;
        for i in 0..ns {
            w.input[off + i] = dims[2 + i];
            w.kernel[off + i] = kernel[i];
            w.stride[off + i] = strides[i];
            w.pad[off + i] = pads[i];
            w.pad_end[off + i] = pads[ns + i];
            w.dil[off + i] = dilations[i];
            w.out[off + i] = conv_out_len(
                dims[2 + i],
                kernel[i],
                strides[i],
                pads[i],
                pads[ns + i],
                dilations[i],
                ceil,
            )?;
        }
        Ok(w)
    }
    fn k(&self) -> usize {
        self.kernel.iter().product()
    }
    fn l(&self) -> usize {
        self.out.iter().product()
    }
    fn in_len(&self) -> usize {
        self.input.iter().product()
    }
    /// Input coordinate along axis `a` for output `o` and tap `k`, if inside the input.
    #[inline]
    fn coord(&self, a: usize, o: usize, k: usize) -> Option<usize> {
        let p = (o * self.stride[a] + k * self.dil[a]) as isize - self.pad[a] as isize;
        (p >= 0 && (p as usize) < self.input[a]).then_some(p as usize)
    }
    fn out_dims(&self, channels: usize) -> Vec<usize> {
        let mut d = vec![self.n, channels];
        d.extend_from_slice(&self.out[3 - self.ns..]);
        d
    }
    /// Visit every (output position, tap) pair of one channel plane with the flat input
    /// offset it reads (None in the padding).
    #[inline]
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, Option<usize>)) {
        let [od, oh, ow] = self.out;
        let [kd, kh, kw] = self.kernel;
        let [_, ih, iw] = self.input;
        for z in 0..kd {
            for y in 0..kh {
                for x in 0..kw {
                    let tap = (z * kh + y) * kw + x;
                    for a in 0..od {
                        let pz = self.coord(0, a, z);
                        for b in 0..oh {
                            let py = self.coord(1, b, y);
                            for c in 0..ow {
                                let l = (a * oh + b) * ow + c;
                                let src = match (pz, py, self.coord(2, c, x)) {
                                    (Some(pz), Some(py), Some(px)) => {
                                        Some((pz * ih + py) * iw + px)
                                    }
                                    _ => None,
                                };
                                f(l, tap, src);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The element types the kernels run in: f32 (training) and f64 (numerical checks).
trait Elem:
    candle_core::WithDType + num_traits::Float + std::ops::AddAssign + std::ops::DivAssign
{
}
impl Elem for f32 {}
impl Elem for f64 {}

fn contiguous<'a, T: Elem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("ecc kernel: input is not contiguous"),
    }
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

/// im2col into the layout (group, C/group * K, N * L) so that the convolution is one
/// batched matmul of the (group, M/group, C/group * K) weight with it.
struct Im2Col {
    w: Window,
    group: usize,
}

fn im2col_fwd<T: Elem>(op: &Im2Col, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = contiguous::<T>(s, l)?;
    let (w, lo, k) = (&op.w, op.w.l(), op.w.k());
    let rows = w.c / op.group * k;
    let mut cols = vec![T::zero(); op.group * rows * w.n * lo];
    let cg = w.c / op.group;
    let plane = w.in_len();
    for n in 0..w.n {
        for c in 0..w.c {
            let src = &x[(n * w.c + c) * plane..][..plane];
            let (gi, ci) = (c / cg, c % cg);
            w.for_each_tap(|o, tap, s| {
                let row = gi * cg * k + ci * k + tap;
                cols[(row * w.n + n) * lo + o] = s.map_or(T::zero(), |s| src[s]);
            });
        }
    }
    Ok((
        T::to_cpu_storage_owned(cols),
        Shape::from((op.group, rows, w.n * lo)),
    ))
}

fn im2col_bwd<T: Elem>(op: &Im2Col, arg: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
    let g = grad.contiguous()?.flatten_all()?.to_vec1::<T>()?;
    let (w, l, k) = (&op.w, op.w.l(), op.w.k());
    let cg = w.c / op.group;
    let plane = w.in_len();
    let mut dx = vec![T::zero(); w.n * w.c * plane];
    for n in 0..w.n {
        for c in 0..w.c {
            let dst = &mut dx[(n * w.c + c) * plane..][..plane];
            let (gi, ci) = (c / cg, c % cg);
            w.for_each_tap(|o, tap, s| {
                if let Some(s) = s {
                    let row = gi * cg * k + ci * k + tap;
                    dst[s] += g[(row * w.n + n) * l + o];
                }
            });
        }
    }
    Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "ecc-im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), im2col_fwd, self, s, l)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        by_dtype!(arg.dtype(), im2col_bwd, self, arg, grad)
    }
}

/// N-d convolution: im2col, one batched matmul, bias.
pub fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, a: &ConvAttrs) -> crate::Result<Tensor> {
    let win = Window::new(
        x.dims(),
        &a.kernel,
        &a.strides,
        &a.pads,
        &a.dilations,
        false,
    )?;
    let (m, g) = (w.dims()[0], a.group);
    let rows = win.c / g * win.k();
    let (n, l) = (win.n, win.l());
    let cols = x.contiguous()?.apply_op1(Im2Col {
        w: win.clone(),
        group: g,
    })?;
    let wg = w.reshape((g, m / g, rows))?;
    let y = wg.matmul(&cols)?; // (g, M/g, N*L)
    let y = if n == 1 {
        y.reshape((1, m, l))?
    } else {
        y.reshape((g, m / g, n, l))?
            .permute((2, 0, 1, 3))?
            .reshape((n, m, l))?
    };
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, m, 1))?)?,
        None => y,
    };
    Ok(y.reshape(win.out_dims(m))?)
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Max,
    Avg { count_include_pad: bool },
}

struct Pool {
    w: Window,
    kind: PoolKind,
}

impl Pool {
    /// Divisor of average pooling at output `o` of one plane: the taps inside the input, or
    /// with count_include_pad the taps inside the padded input (as onnxruntime does).
    fn divisors(&self) -> Vec<f32> {
        let w = &self.w;
        let mut inside = vec![0f32; w.l()];
        w.for_each_tap(|o, _, s| {
            if s.is_some() {
                inside[o] += 1.0;
            }
        });
        if let PoolKind::Avg {
            count_include_pad: true,
        } = self.kind
        {
            // Count taps whose coordinate lies in [-pad_begin, len + pad_end) on each axis.
            let [_, oh, ow] = w.out;
            let mut counts = vec![1f32; w.l()];
            for (o, cnt) in counts.iter_mut().enumerate() {
                let idx = [o / (oh * ow), (o / ow) % oh, o % ow];
                for (a, &i) in idx.iter().enumerate() {
                    let start = (i * w.stride[a]) as isize - w.pad[a] as isize;
                    let eff = ((w.kernel[a] - 1) * w.dil[a] + 1) as isize;
                    let end = (start + eff).min((w.input[a] + w.pad_end[a]) as isize);
                    let d = w.dil[a] as isize;
                    *cnt *= ((end - start + d - 1) / d).max(1) as f32;
                }
            }
            return counts;
        }
        inside.iter().map(|&c| c.max(1.0)).collect()
    }
}

fn pool_fwd<T: Elem>(op: &Pool, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = contiguous::<T>(s, l)?;
    let w = &op.w;
    let (plane, lo) = (w.in_len(), w.l());
    let mut y = vec![T::zero(); w.n * w.c * lo];
    let div: Vec<T> = if op.kind == PoolKind::Max {
        vec![]
    } else {
        op.divisors()
            .into_iter()
            .map(|d| T::from(d).expect("a float"))
            .collect()
    };
    for (p, out) in y.chunks_mut(lo).enumerate() {
        let src = &x[p * plane..][..plane];
        match op.kind {
            PoolKind::Max => {
                out.fill(T::neg_infinity());
                w.for_each_tap(|o, _, s| {
                    if let Some(s) = s {
                        if src[s] > out[o] || src[s].is_nan() {
                            out[o] = src[s];
                        }
                    }
                });
            }
            PoolKind::Avg { .. } => {
                w.for_each_tap(|o, _, s| {
                    if let Some(s) = s {
                        out[o] += src[s];
                    }
                });
                for (v, d) in out.iter_mut().zip(&div) {
                    *v /= *d;
                }
            }
        }
    }
    Ok((T::to_cpu_storage_owned(y), Shape::from(w.out_dims(w.c))))
}

fn pool_bwd<T: Elem>(
    op: &Pool,
    arg: &Tensor,
    res: &Tensor,
    grad: &Tensor,
) -> Result<Option<Tensor>> {
    let x = arg.contiguous()?.flatten_all()?.to_vec1::<T>()?;
    let y = res.contiguous()?.flatten_all()?.to_vec1::<T>()?;
    let g = grad.contiguous()?.flatten_all()?.to_vec1::<T>()?;
    let w = &op.w;
    let (plane, lo) = (w.in_len(), w.l());
    let mut dx = vec![T::zero(); x.len()];
    let div: Vec<T> = if op.kind == PoolKind::Max {
        vec![]
    } else {
        op.divisors()
            .into_iter()
            .map(|d| T::from(d).expect("a float"))
            .collect()
    };
    for p in 0..w.n * w.c {
        let src = &x[p * plane..][..plane];
        let dst = &mut dx[p * plane..][..plane];
        let (yp, gp) = (&y[p * lo..][..lo], &g[p * lo..][..lo]);
        match op.kind {
            PoolKind::Max => {
                // The gradient goes to the first tap that attains the max.
                let mut taken = vec![false; lo];
                w.for_each_tap(|o, _, s| {
                    if let Some(s) = s {
                        if !taken[o] && src[s] == yp[o] {
                            dst[s] += gp[o];
                            taken[o] = true;
                        }
                    }
                });
            }
            PoolKind::Avg { .. } => w.for_each_tap(|o, _, s| {
                if let Some(s) = s {
                    dst[s] += gp[o] / div[o];
                }
            }),
        }
    }
    Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "ecc-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), pool_fwd, self, s, l)
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        by_dtype!(arg.dtype(), pool_bwd, self, arg, res, grad)
    }
}

fn pool(x: &Tensor, p: &PoolAttrs, kind: PoolKind) -> crate::Result<Tensor> {
    let w = Window::new(
        x.dims(),
        &p.kernel,
        &p.strides,
        &p.pads,
        &p.dilations,
        p.ceil_mode,
    )?;
    Ok(x.contiguous()?.apply_op1(Pool { w, kind })?)
}

pub fn max_pool(x: &Tensor, p: &PoolAttrs) -> crate::Result<Tensor> {
    pool(x, p, PoolKind::Max)
}

pub fn average_pool(x: &Tensor, p: &PoolAttrs, count_include_pad: bool) -> crate::Result<Tensor> {
    pool(x, p, PoolKind::Avg { count_include_pad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// d/dx of sum(f(x) * r) by autograd against central differences.
    fn grad_check(f: impl Fn(&Tensor) -> Tensor, dims: &[usize]) {
        let dev = Device::Cpu;
        // Distinct values 0.05 apart, shuffled with a fixed seed: no max-pool tie is within
        // reach of the finite-difference step, and the test is deterministic.
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n: usize = dims.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
        v.shuffle(&mut rng);
        let x = Var::from_tensor(&Tensor::from_vec(v, dims, &dev).unwrap()).unwrap();
        let y = f(x.as_tensor());
        let r = Tensor::from_vec(
            (0..y.elem_count())
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
                .collect::<Vec<_>>(),
            y.dims(),
            &dev,
        )
        .unwrap();
        let loss = (y * &r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let x0 = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in (0..x0.len()).step_by(7) {
            let at = |d: f32| {
                let mut v = x0.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, dims, &dev).unwrap();
                (f(&t) * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 2e-2 * (1.0 + fd.abs()),
                "at {i}: autograd {} vs finite difference {fd}",
                g[i]
            );
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
        grad_check(|x| conv(x, &w, None, &a).unwrap(), &[2, 3, 7, 6]);
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
        grad_check(|x| conv(x, &wg, None, &ag).unwrap(), &[2, 2, 9]);
    }

    #[test]
    fn pool_gradients_match_finite_differences() {
        let p = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            ceil_mode: true,
        };
        grad_check(|x| average_pool(x, &p, false).unwrap(), &[2, 2, 7, 6]);
        grad_check(|x| average_pool(x, &p, true).unwrap(), &[2, 2, 7, 6]);
        grad_check(|x| max_pool(x, &p).unwrap(), &[2, 2, 7, 6]);
    }
}
