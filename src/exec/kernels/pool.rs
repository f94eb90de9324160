//! Max and average pooling with pads, dilations and ceil mode (a fast path for 2x2 max
//! pooling), and their backward passes.

use super::window::Window;
use super::{apply1, contiguous, contiguous3, Call, Elem, Rec, TapeOp};
use crate::ir::PoolAttrs;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

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
        w.for_each_inside(|o, _, _| inside[o] += 1.0);
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

    /// [`Pool::divisors`] in the kernel's element type (none for max pooling).
    fn divisors_as<T: Elem>(&self) -> Vec<T> {
        if self.kind == PoolKind::Max {
            return vec![];
        }
        self.divisors()
            .into_iter()
            .map(|d| T::from(d).expect("a float"))
            .collect()
    }

    /// The common 2x2 max pooling with stride 2, no padding or dilation, 2-D, even
    /// height and width: plain loops instead of the general window walk.
    fn is_max_2x2(&self) -> bool {
        let w = &self.w;
        self.kind == PoolKind::Max
            && w.ns == 2
            && w.kernel == [1, 2, 2]
            && w.stride == [1, 2, 2]
            && w.dil == [1, 1, 1]
            && w.pad == [0; 3]
            && w.pad_end == [0; 3]
            && w.out[1] * 2 == w.input[1]
            && w.out[2] * 2 == w.input[2]
    }
}

/// 2x2 max pooling of one plane (see [`Pool::is_max_2x2`]); the same NaN rule as the
/// general path (a NaN tap wins). Selects, not branches (which tap is largest is data).
fn max_2x2_plane<T: Elem>(iw: usize, src: &[T], out: &mut [T]) {
    let ow = iw / 2;
    for (oy, orow) in out.chunks_mut(ow.max(1)).enumerate() {
        let (r0, r1) = (&src[2 * oy * iw..][..iw], &src[(2 * oy + 1) * iw..][..iw]);
        for ((o, a), b) in orow
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            let mut m = a[0];
            for v in [a[1], b[0], b[1]] {
                m = if v > m || v.is_nan() { v } else { m };
            }
            *o = m;
        }
    }
}

/// Its backward: each output's gradient goes to the first of the four taps (row-major)
/// equal to the output. The windows do not overlap, so every input is written once; the
/// choice is made with selects, without branches.
fn max_2x2_plane_bwd<T: Elem>(iw: usize, src: &[T], y: &[T], g: &[T], dst: &mut [T]) {
    let ow = iw / 2;
    let zero = T::zero();
    for (oy, (yrow, grow)) in y.chunks(ow.max(1)).zip(g.chunks(ow.max(1))).enumerate() {
        let (r0, r1) = (&src[2 * oy * iw..][..iw], &src[(2 * oy + 1) * iw..][..iw]);
        let (d0, d1) = dst[2 * oy * iw..][..2 * iw].split_at_mut(iw);
        for ((((&m, &gv), (a, b)), da), db) in yrow
            .iter()
            .zip(grow)
            .zip(r0.chunks_exact(2).zip(r1.chunks_exact(2)))
            .zip(d0.chunks_exact_mut(2))
            .zip(d1.chunks_exact_mut(2))
        {
            let e = [a[0] == m, a[1] == m, b[0] == m, b[1] == m];
            let t = [
                e[0],
                e[1] & !e[0],
                e[2] & !(e[0] | e[1]),
                e[3] & !(e[0] | e[1] | e[2]),
            ];
            da[0] = if t[0] { gv } else { zero };
            da[1] = if t[1] { gv } else { zero };
            db[0] = if t[2] { gv } else { zero };
            db[1] = if t[3] { gv } else { zero };
        }
    }
}

/// Pooling forward, in parallel over the (sample, channel) planes.
fn pool_fwd<T: Elem>(op: &Pool, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let x = contiguous::<T>(s, l)?;
    let w = &op.w;
    let (plane, lo) = (w.in_len(), w.l());
    let mut y = vec![T::zero(); w.n * w.c * lo];
    let div = op.divisors_as::<T>();
    let fast = op.is_max_2x2();
    y.par_chunks_mut(lo.max(1))
        .enumerate()
        .for_each(|(p, out)| {
            let src = &x[p * plane..][..plane];
            if fast {
                return max_2x2_plane(w.input[2], src, out);
            }
            match op.kind {
                PoolKind::Max => {
                    out.fill(T::neg_infinity());
                    w.for_each_inside(|o, _, s| {
                        if src[s] > out[o] || src[s].is_nan() {
                            out[o] = src[s];
                        }
                    });
                }
                PoolKind::Avg { .. } => {
                    w.for_each_inside(|o, _, s| out[o] += src[s]);
                    for (v, d) in out.iter_mut().zip(&div) {
                        *v /= *d;
                    }
                }
            }
        });
    Ok((T::to_cpu_storage_owned(y), Shape::from(w.out_dims(w.c))))
}

/// Pooling backward, (grad, x, y) -> dx, in parallel over planes. Max pooling sends each
/// output's gradient to the first tap that attains the max.
struct PoolBwd<'a>(&'a Pool);

fn pool_bwd<T: Elem>(
    op: &PoolBwd,
    gs: &CpuStorage,
    gl: &Layout,
    xs: &CpuStorage,
    xl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let (g, x, y) = contiguous3::<T>((gs, gl), (xs, xl), (ys, yl))?;
    let op = op.0;
    let w = &op.w;
    let (plane, lo) = (w.in_len(), w.l());
    let mut dx = vec![T::zero(); x.len()];
    let div = op.divisors_as::<T>();
    let fast = op.is_max_2x2();
    dx.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(p, dst)| {
            let src = &x[p * plane..][..plane];
            let (yp, gp) = (&y[p * lo..][..lo], &g[p * lo..][..lo]);
            if fast {
                return max_2x2_plane_bwd(w.input[2], src, yp, gp, dst);
            }
            match op.kind {
                PoolKind::Max => {
                    let mut taken = vec![false; lo];
                    w.for_each_inside(|o, _, s| {
                        if !taken[o] && src[s] == yp[o] {
                            dst[s] += gp[o];
                            taken[o] = true;
                        }
                    });
                }
                PoolKind::Avg { .. } => w.for_each_inside(|o, _, s| dst[s] += gp[o] / div[o]),
            }
        });
    Ok((T::to_cpu_storage_owned(dx), xl.shape().clone()))
}

op3!(PoolBwd<'_>, "ecc-pool-bwd", pool_bwd);

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "ecc-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), pool_fwd, self, s, l)
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            &arg.contiguous()?,
            &res.contiguous()?,
            &PoolBwd(self),
        )?;
        Ok(Some(dx))
    }
}

impl TapeOp for Pool {
    fn tape_bwd(
        &self,
        args: &[Tensor],
        res: &Tensor,
        grad: &Tensor,
        _want: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![self.bwd(&args[0], res, grad)?])
    }
}

/// Max pooling, or average pooling with `avg = Some(count_include_pad)`, recorded as `rec`
/// says.
pub fn pool_rec(x: &Tensor, p: &PoolAttrs, avg: Option<bool>, rec: Rec) -> crate::Result<Call> {
    let kind = match avg {
        None => PoolKind::Max,
        Some(count_include_pad) => PoolKind::Avg { count_include_pad },
    };
    let w = Window::new(
        x.dims(),
        &p.kernel,
        &p.strides,
        &p.pads,
        &p.dilations,
        p.ceil_mode,
    )?;
    Ok(apply1(&x.contiguous()?, Pool { w, kind }, rec)?)
}

pub fn max_pool(x: &Tensor, p: &PoolAttrs) -> crate::Result<Tensor> {
    Ok(pool_rec(x, p, None, Rec::Graph)?.0)
}

pub fn average_pool(x: &Tensor, p: &PoolAttrs, count_include_pad: bool) -> crate::Result<Tensor> {
    Ok(pool_rec(x, p, Some(count_include_pad), Rec::Graph)?.0)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::testing::*;
    use candle_core::{Device, Var};

    /// 2x2 pooling with stride 2, no padding: the fast path's case.
    fn max_2x2() -> PoolAttrs {
        PoolAttrs {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            ceil_mode: false,
        }
    }

    #[test]
    fn max_pool_2x2_fast_path_matches_candle_and_finite_differences() {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v: Vec<f32> = (0..2 * 3 * 6 * 8).map(|i| i as f32 * 0.01 - 1.0).collect();
        v.shuffle(&mut rng);
        let x = Tensor::from_vec(v, (2, 3, 6, 8), &Device::Cpu).unwrap();
        let p = max_2x2();
        let ours = max_pool(&x, &p).unwrap();
        let theirs = x.max_pool2d(2).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // candle's own max_pool2d backward scales the gradient by 1/4 (it averages a mask),
        // so the gradient is checked against finite differences instead.
        grad_check(|x| max_pool(x, &p).unwrap(), &[2, 3, 6, 8]);
    }

    #[test]
    fn max_pool_2x2_ties_send_the_gradient_to_the_first_tap() {
        // Values from {0, 0.5, 1}: most windows have ties (as ReLU outputs at 0 do).
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, c, h, w) = (2, 3, 4, 6);
        let v: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.gen_range(0..3) as f32 * 0.5)
            .collect();
        let x = Var::from_vec(v.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let p = max_2x2();
        let y = max_pool(x.as_tensor(), &p).unwrap();
        let (oh, ow) = (h / 2, w / 2);
        let g: Vec<f32> = (0..n * c * oh * ow).map(|i| 1.0 + i as f32).collect();
        let gt = Tensor::from_vec(g.clone(), y.dims(), &Device::Cpu).unwrap();
        let dx = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = dx.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let dx = dx.to_vec1::<f32>().unwrap();
        let mut want = vec![0f32; v.len()];
        let mut ties = 0;
        for p in 0..n * c {
            for (oy, ox) in (0..oh).flat_map(|a| (0..ow).map(move |b| (a, b))) {
                let taps = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(dy, dx)| p * h * w + (2 * oy + dy) * w + 2 * ox + dx);
                let m = taps.iter().map(|&t| v[t]).fold(f32::MIN, f32::max);
                let first = *taps.iter().find(|&&t| v[t] == m).unwrap();
                ties += (taps.iter().filter(|&&t| v[t] == m).count() > 1) as usize;
                want[first] = g[p * oh * ow + oy * ow + ox];
            }
        }
        assert!(ties > 10, "the input has ties ({ties})");
        assert_eq!(dx, want);
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
