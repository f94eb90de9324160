//! Resize and Upsample: separable interpolation, one axis at a time, as the ONNX reference
//! (`onnx.reference.ops.op_resize`) computes it. Along an axis, every output position reads
//! a few input positions (its taps) with fixed coefficients, computed here once from the
//! coordinate transformation and the interpolation mode; the resize is then a sum over taps
//! of index-selects times coefficients, so candle's autograd gives the exact backward pass
//! (the adjoint scatters through `index_select`'s gradient).

use crate::ir::{Interp, NearestMode, ResizeAttrs};
use candle_core::{DType, Tensor};

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

/// Interpolate `x` along `axis` with `taps`: the sum over tap slots k of
/// x.index_select(index_k) * coefficient_k (slots padded with coefficient 0), plus `fill`
/// where a position has no taps.
fn along(x: &Tensor, axis: usize, taps: &Taps, fill: f32) -> candle_core::Result<Tensor> {
    let dev = x.device();
    let k = taps.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut shape = vec![1; x.rank()];
    shape[axis] = taps.len();
    let mut y: Option<Tensor> = None;
    for slot in 0..k {
        let idx: Vec<u32> = taps
            .iter()
            .map(|t| t.get(slot).map_or(0, |&(i, _)| i as u32))
            .collect();
        let coef: Vec<f64> = taps
            .iter()
            .map(|t| t.get(slot).map_or(0.0, |&(_, c)| c))
            .collect();
        let picked = x.index_select(&Tensor::new(idx.as_slice(), dev)?, axis)?;
        let term = if coef.iter().all(|&c| c == 1.0) {
            picked
        } else {
            let c = Tensor::from_vec(coef, shape.as_slice(), dev)?.to_dtype(x.dtype())?;
            picked.broadcast_mul(&c)?
        };
        y = Some(match y {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    let y = y.expect("at least one slot");
    if fill != 0.0 && taps.iter().any(Vec::is_empty) {
        let f: Vec<f64> = taps
            .iter()
            .map(|t| if t.is_empty() { fill as f64 } else { 0.0 })
            .collect();
        let f = Tensor::from_vec(f, shape.as_slice(), dev)?.to_dtype(x.dtype())?;
        return y.broadcast_add(&f);
    }
    Ok(y)
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
        let t = taps(r, axis, len_in, len_out, scale);
        y = along(&y.contiguous()?, axis, &t, r.extrapolation)?;
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
