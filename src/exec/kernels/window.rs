//! Window geometry of convolutions and pooling (spatial axes padded to 3), and im2col /
//! col2im over it.

use super::Elem;
use crate::ir::conv_out_len;

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
    pub(super) fn new(
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
    pub(super) fn k(&self) -> usize {
        self.kernel.iter().product()
    }
    pub(super) fn l(&self) -> usize {
        self.out.iter().product()
    }
    pub(super) fn in_len(&self) -> usize {
        self.input.iter().product()
    }
    /// Input coordinate along axis `a` for output `o` and tap `k`, if inside the input.
    #[inline]
    pub(super) fn coord(&self, a: usize, o: usize, k: usize) -> Option<usize> {
        let p = (o * self.stride[a] + k * self.dil[a]) as isize - self.pad[a] as isize;
        (p >= 0 && (p as usize) < self.input[a]).then_some(p as usize)
    }
    pub(super) fn out_dims(&self, channels: usize) -> Vec<usize> {
        let mut d = vec![self.n, channels];
        d.extend_from_slice(&self.out[3 - self.ns..]);
        d
    }
    /// Visit every output row (run along the last spatial axis) of one channel plane, tap by
    /// tap in order: `f(tap, first, base, lo, hi)` says that outputs `first + ox` for `ox` in
    /// `lo..hi` read the input at flat offset `base + ox * stride_x`, and every other output
    /// of that row reads padding (rows wholly in the padding come with lo == hi).
    #[inline]
    pub(super) fn for_each_row_all(&self, mut f: impl FnMut(usize, usize, isize, usize, usize)) {
        let [od, oh, ow] = self.out;
        let [kd, kh, kw] = self.kernel;
        let [_, ih, iw] = self.input;
        let sx = self.stride[2] as isize;
        for z in 0..kd {
            for y in 0..kh {
                for x in 0..kw {
                    let tap = (z * kh + y) * kw + x;
                    // Outputs ox with 0 <= ox * sx + off < iw read inside the input.
                    let off = (x * self.dil[2]) as isize - self.pad[2] as isize;
                    let lo = if off >= 0 {
                        0
                    } else {
                        ((-off + sx - 1) / sx) as usize
                    }
                    .min(ow);
                    let last = iw as isize - 1 - off;
                    let hi = if last < 0 {
                        0
                    } else {
                        (last / sx + 1) as usize
                    }
                    .clamp(lo, ow);
                    for a in 0..od {
                        let pz = self.coord(0, a, z);
                        for b in 0..oh {
                            let first = (a * oh + b) * ow;
                            match (pz, self.coord(1, b, y)) {
                                (Some(pz), Some(py)) if lo < hi => {
                                    let base = ((pz * ih + py) * iw) as isize + off;
                                    f(tap, first, base, lo, hi);
                                }
                                _ => f(tap, first, 0, 0, 0),
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`Window::for_each_row_all`] without the rows wholly in the padding.
    #[inline]
    pub(super) fn for_each_row(&self, mut f: impl FnMut(usize, usize, isize, usize, usize)) {
        self.for_each_row_all(|tap, first, base, lo, hi| {
            if lo < hi {
                f(tap, first, base, lo, hi)
            }
        })
    }

    /// Visit every (output position, tap, flat input offset) of one channel plane whose tap
    /// lies inside the input, taps in order.
    #[inline]
    pub(super) fn for_each_inside(&self, mut f: impl FnMut(usize, usize, usize)) {
        let sx = self.stride[2];
        self.for_each_row(|tap, first, base, lo, hi| {
            for ox in lo..hi {
                f(first + ox, tap, (base + (ox * sx) as isize) as usize);
            }
        });
    }
}

/// im2col of one sample: `x` is (C, plane), `cols` becomes (C * K, L), row `c * K + tap`
/// holding the input value each output position reads through that tap (0 in the padding).
/// With groups, the rows of group `gi` are the contiguous block `gi * C/g * K ..`.
pub(super) fn im2col_one<T: Elem>(w: &Window, x: &[T], cols: &mut [T]) {
    let (lo, k, plane, sx) = (w.l(), w.k(), w.in_len(), w.stride[2]);
    let ow = w.out[2];
    for c in 0..w.c {
        let src = &x[c * plane..][..plane];
        let dst = &mut cols[c * k * lo..][..k * lo];
        // Every entry is written: the padding's zeros row by row, so `cols` needs no
        // clearing pass first.
        w.for_each_row_all(|tap, first, base, a, b| {
            let row = &mut dst[tap * lo + first..][..ow];
            row[..a].fill(T::zero());
            row[b..].fill(T::zero());
            let d = &mut row[a..b];
            if sx == 1 {
                d.copy_from_slice(&src[(base + a as isize) as usize..][..b - a]);
            } else if a < b {
                // One slice and a stepped iterator: no bounds check per value.
                let from = &src[(base + (a * sx) as isize) as usize..];
                for (v, &s) in d.iter_mut().zip(from.iter().step_by(sx)) {
                    *v = s;
                }
            }
        });
    }
}

/// The adjoint of [`im2col_one`]: add each column entry back onto the input it was read from.
pub(super) fn col2im_one<T: Elem>(w: &Window, cols: &[T], dx: &mut [T]) {
    let (lo, k, plane, sx) = (w.l(), w.k(), w.in_len(), w.stride[2]);
    for c in 0..w.c {
        let src = &cols[c * k * lo..][..k * lo];
        let dst = &mut dx[c * plane..][..plane];
        w.for_each_row(|tap, first, base, a, b| {
            let s = &src[tap * lo + first..][a..b];
            if sx == 1 {
                let d = &mut dst[(base + a as isize) as usize..][..b - a];
                for (d, &v) in d.iter_mut().zip(s) {
                    *d += v;
                }
            } else if a < b {
                let to = &mut dst[(base + (a * sx) as isize) as usize..];
                for (d, &v) in to.iter_mut().step_by(sx).zip(s) {
                    *d += v;
                }
            }
        });
    }
}
