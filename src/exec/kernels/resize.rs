//! Resize and Upsample: separable interpolation, one axis at a time, as the ONNX reference
//! (`onnx.reference.ops.op_resize`) computes it. Along an axis, every output position reads
//! a few input positions (its taps) with fixed coefficients, computed here once from the
//! coordinate transformation and the interpolation mode. One candle op per resized axis
//! applies them (rows of the positions after the axis at a time, in parallel over the
//! positions before it), and its backward pass scatters the output gradient back through
//! the same taps, in order, so the result does not depend on the thread count.

use super::{contiguous, Elem};
use crate::ir::{Interp, NearestMode, ResizeAttrs};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// For each output position along one axis: (input index, coefficient) pairs, clamped to
/// the input and with zero coefficients dropped.
pub(crate) type Taps = Vec<Vec<(usize, f64)>>;

/// The source coordinate of output position `y` (ONNX `coordinate_transformation_mode`;
/// `roi` the axis's region of interest for tf_crop_and_resize).
fn source(coords: &str, y: f64, scale: f64, len_in: usize, len_out: usize, roi: (f64, f64)) -> f64 {
    let out_w = scale * len_in as f64;
    match coords {
        "tf_crop_and_resize" => {
            let span = (roi.1 - roi.0) * (len_in as f64 - 1.0);
            let x = if out_w == 1.0 {
                span / 2.0
            } else {
                y * span / (out_w - 1.0)
            };
            x + roi.0 * (len_in as f64 - 1.0)
        }
        "tf_half_pixel_for_nn" => (y + 0.5) / scale,
        "align_corners" => {
            if out_w == 1.0 {
                0.0
            } else {
                y * (len_in as f64 - 1.0) / (out_w - 1.0)
            }
        }
        "asymmetric" => y / scale,
        "pytorch_half_pixel" => {
            if out_w == 1.0 {
                -0.5
            } else {
                (y + 0.5) / scale - 0.5
            }
        }
        "half_pixel_symmetric" => {
            let adjustment = len_out as f64 / out_w;
            let offset = len_in as f64 / 2.0 * (1.0 - adjustment);
            offset + (y + 0.5) / scale - 0.5
        }
        // half_pixel (the importer admits nothing else).
        _ => (y + 0.5) / scale - 0.5,
    }
}

fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
    } else if x < 2.0 {
        a * x * x * x - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// The coefficients for a source coordinate at `ratio` past the tap grid (in (0, 1]).
fn coefficients(interp: Interp, antialias: bool, ratio: f64, scale: f64) -> Vec<f64> {
    match interp {
        Interp::Nearest(m) => {
            if ratio == 1.0 {
                return vec![0.0, 1.0];
            }
            let up = match m {
                NearestMode::RoundPreferFloor => ratio > 0.5,
                NearestMode::RoundPreferCeil => ratio >= 0.5,
                NearestMode::Floor => false,
                NearestMode::Ceil => true,
            };
            vec![!up as u8 as f64, up as u8 as f64]
        }
        Interp::Linear if !antialias => vec![1.0 - ratio, ratio],
        Interp::Linear => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..start + 2 - 2 * start)
                .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| v / sum).collect()
        }
        Interp::Cubic(a) if !antialias => {
            let a = a as f64;
            vec![
                cubic(ratio + 1.0, a),
                cubic(ratio, a),
                cubic(1.0 - ratio, a),
                cubic(2.0 - ratio, a),
            ]
        }
        Interp::Cubic(a) => {
            let s = scale.min(1.0);
            let start = (-2.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start)
                .map(|i| cubic(s * (i as f64 - ratio), a as f64))
                .collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| v / sum).collect()
        }
    }
}

/// The taps of every output position along axis `axis` (`_interpolate_1d_along_axis`). A
/// position whose tf_crop_and_resize source lies outside the input has none (it takes the
/// extrapolation value).
pub(crate) fn taps(
    r: &ResizeAttrs,
    axis: usize,
    len_in: usize,
    len_out: usize,
    scale: f64,
) -> Taps {
    let roi = r.roi.as_ref().map_or((0.0, 1.0), |q| q[axis]);
    (0..len_out)
        .map(|o| {
            let x = source(&r.coords, o as f64, scale, len_in, len_out, roi);
            if r.roi.is_some() && (x < 0.0 || x > len_in as f64 - 1.0) {
                return vec![];
            }
            let xi = x.floor();
            let ratio = if x == xi { 1.0 } else { x - xi };
            let mut c = coefficients(r.interp, r.antialias, ratio, scale);
            let n = c.len() as i64;
            let pad = (n + 1) / 2;
            let xp = x + pad as f64;
            let p = xp.floor() as i64;
            let frac = xp - p as f64;
            let offset = if n % 2 == 0 {
                if frac == 0.0 {
                    -(n / 2)
                } else {
                    -(n / 2) + 1
                }
            } else {
                let base = -((n - 1) / 2);
                if frac <= 0.5 {
                    base
                } else {
                    base + 1
                }
            };
            let start = p + offset - pad;
            let idx: Vec<i64> = (0..n).map(|j| start + j).collect();
            if r.exclude_outside {
                for (cj, &i) in c.iter_mut().zip(&idx) {
                    if i < 0 || i >= len_in as i64 {
                        *cj = 0.0;
                    }
                }
                let sum: f64 = c.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                c.iter_mut().for_each(|v| *v /= sum);
            }
            let mut merged: Vec<(usize, f64)> = vec![];
            for (&i, &cj) in idx.iter().zip(&c) {
                let i = i.clamp(0, len_in as i64 - 1) as usize;
                match merged.iter_mut().find(|(k, _)| *k == i) {
                    Some(t) => t.1 += cj,
                    None => merged.push((i, cj)),
                }
            }
            merged.retain(|&(_, cj)| cj != 0.0);
            merged
        })
        .collect()
}

/// One axis of a resize: `taps` (one list per output position), `fill` where a position has
/// none (tf_crop_and_resize's extrapolation value).
#[derive(Clone)]
struct Along {
    axis: usize,
    taps: Arc<Taps>,
    fill: f64,
}

impl Along {
    /// (positions before the axis, input length, positions after it) of dims `d`.
    fn split(&self, d: &[usize]) -> (usize, usize, usize) {
        let outer = d[..self.axis].iter().product();
        let inner = d[self.axis + 1..].iter().product();
        (outer, d[self.axis], inner)
    }
}

fn along_fwd<T: Elem>(op: &Along, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let x = contiguous::<T>(s, l)?;
    let (outer, len_in, inner) = op.split(l.dims());
    let len_out = op.taps.len();
    let mut y = vec![T::zero(); outer * len_out * inner];
    let fill = T::from(op.fill).unwrap_or(T::zero());
    y.par_chunks_mut(len_out * inner)
        .zip(x.par_chunks(len_in * inner))
        .for_each(|(yo, xo)| {
            if inner == 1 {
                // The last axis: one gather per output.
                for (v, taps) in yo.iter_mut().zip(op.taps.iter()) {
                    *v = if taps.is_empty() { fill } else { T::zero() };
                    for &(i, c) in taps {
                        *v += T::from(c).unwrap_or(T::zero()) * xo[i];
                    }
                }
                return;
            }
            for (o, row) in yo.chunks_mut(inner).enumerate() {
                let taps = &op.taps[o];
                if taps.is_empty() {
                    row.iter_mut().for_each(|v| *v = fill);
                }
                for &(i, c) in taps {
                    let c = T::from(c).unwrap_or(T::zero());
                    let src = &xo[i * inner..][..inner];
                    row.iter_mut().zip(src).for_each(|(v, &a)| *v += c * a);
                }
            }
        });
    let mut dims = l.dims().to_vec();
    dims[op.axis] = len_out;
    Ok((T::to_cpu_storage_owned(y), Shape::from(dims)))
}

/// The adjoint: the output gradient scattered back through the taps.
struct AlongBack(Along, usize);

fn along_bwd<T: Elem>(op: &AlongBack, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    use rayon::prelude::*;
    let (a, len_in) = (&op.0, op.1);
    let g = contiguous::<T>(s, l)?;
    let (outer, len_out, inner) = a.split(l.dims());
    let mut dx = vec![T::zero(); outer * len_in * inner];
    dx.par_chunks_mut(len_in * inner)
        .zip(g.par_chunks(len_out * inner))
        .for_each(|(dxo, go)| {
            if inner == 1 {
                for (&gv, taps) in go.iter().zip(a.taps.iter()) {
                    for &(i, c) in taps {
                        dxo[i] += T::from(c).unwrap_or(T::zero()) * gv;
                    }
                }
                return;
            }
            for (o, row) in go.chunks(inner).enumerate() {
                for &(i, c) in &a.taps[o] {
                    let c = T::from(c).unwrap_or(T::zero());
                    let dst = &mut dxo[i * inner..][..inner];
                    dst.iter_mut().zip(row).for_each(|(v, &b)| *v += c * b);
                }
            }
        });
    let mut dims = l.dims().to_vec();
    dims[a.axis] = len_in;
    Ok((T::to_cpu_storage_owned(dx), Shape::from(dims)))
}

impl CustomOp1 for Along {
    fn name(&self) -> &'static str {
        "ecc-resize-axis"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), along_fwd, self, s, l)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = AlongBack(self.clone(), arg.dims()[self.axis]);
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

impl CustomOp1 for AlongBack {
    fn name(&self) -> &'static str {
        "ecc-resize-axis-bwd"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), along_bwd, self, s, l)
    }
}

/// Resize `x` (any rank; the batch axis is never resized) to `r.out`.
pub fn resize(x: &Tensor, r: &ResizeAttrs) -> crate::Result<Tensor> {
    let mut y = x.clone();
    if !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Err(crate::Error::unsupported("Resize of a non-float tensor"));
    }
    for axis in 1..x.rank() {
        let (len_in, len_out, scale) = (x.dims()[axis], r.out[axis], r.scales[axis]);
        let whole = r.roi.as_ref().is_none_or(|q| q[axis] == (0.0, 1.0));
        if (scale - 1.0).abs() <= 1e-9 && len_out == len_in && whole {
            continue;
        }
        let op = Along {
            axis,
            taps: Arc::new(taps(r, axis, len_in, len_out, scale)),
            fill: r.extrapolation as f64,
        };
        y = y.contiguous()?.apply_op1(op)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(interp: Interp, coords: &str) -> ResizeAttrs {
        ResizeAttrs {
            upsample: false,
            interp,
            coords: coords.into(),
            roi: None,
            extrapolation: 0.0,
            antialias: false,
            exclude_outside: false,
            keep_aspect: "stretch".into(),
            axes: None,
            attr_scales: None,
            scales: vec![],
            out: vec![],
        }
    }

    /// Nearest 2x with asymmetric coordinates and floor repeats every input; linear
    /// half-pixel 2x gives the quarter/three-quarter weights, clamped at the borders; every
    /// interpolating row sums to 1.
    #[test]
    fn taps_of_common_resizes() {
        let nearest = attrs(Interp::Nearest(NearestMode::Floor), "asymmetric");
        let t = taps(&nearest, 2, 3, 6, 2.0);
        let idx: Vec<usize> = t.iter().map(|r| r[0].0).collect();
        assert_eq!(idx, [0, 0, 1, 1, 2, 2]);
        assert!(t.iter().all(|r| r.len() == 1 && r[0].1 == 1.0));
        let linear = attrs(Interp::Linear, "half_pixel");
        let t = taps(&linear, 2, 3, 6, 2.0);
        assert_eq!(t[0], [(0, 1.0)]);
        assert_eq!(t[1], [(0, 0.75), (1, 0.25)]);
        assert_eq!(t[2], [(0, 0.25), (1, 0.75)]);
        assert_eq!(t[5], [(2, 1.0)]);
        let cubic = attrs(Interp::Cubic(-0.75), "align_corners");
        for r in taps(&cubic, 2, 5, 9, 9.0 / 5.0) {
            let s: f64 = r.iter().map(|t| t.1).sum();
            assert!((s - 1.0).abs() < 1e-12, "{r:?}");
        }
    }
}
