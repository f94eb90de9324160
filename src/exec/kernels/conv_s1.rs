//! Stride-1 2-D convolution without im2col (issue 12: the im2col/col2im copies were a fifth
//! of a ResNet-20 training step).
//!
//! A chunk of samples is laid out as one "flat" image F of rows Wq = max(W, Wo) wide, the
//! samples one after the other, each after Ph = max(pt, pb) zero rows (a sample's bottom
//! padding is the next one's top padding): S = (H + Ph)·Wq values per sample, image row y of
//! sample j at j·S + (Ph + y)·Wq, columns W..Wq zero. There is no zero column for the
//! horizontal padding: the buffer holds kw rows per channel, row (c, dx) the flat image
//! shifted by dx − pl with the values that a tap dx would read across an image row's edge
//! set to zero ("masked": column t mod Wq where t mod Wq + dx − pl falls outside 0..W), so a
//! read position's column is the output's column and the masks stand in for the padding.
//! Output position q = j·S + oy·Wq + ox of the "wide" grid reads tap (dy, dx) at q + B +
//! dy·Wq of row (c, dx), B = (Ph − pt)·Wq. So the taps of kernel row dy read one strided
//! matrix X_dy (rows (c, dx), start B + dy·Wq), a kw-fold copy where im2col is kh·kw-fold,
//! and the convolution is one matmul per kernel row, accumulated, `y_wide (M x Q) += W_dy
//! (M x C·kw) · X_dy (C·kw x Q)`; the wide grid's extra columns (the Ph rows between samples,
//! and ox >= Wo where Wo < W) are computed and dropped when the result is copied out. For a
//! 3x3 convolution with pads 1 on 8x8 planes the wide grid is 9·8 = 72 per sample for 64
//! outputs (+12.5%); with a zero column per row as well (before the masks) it was 9·9 = 81
//! (+27%), and padding each plane whole (10·10 + 2) made it 102 (+59%). The input gradient
//! is the same convolution of the output gradient with the kernel flipped and transposed
//! (pads k − 1 − p), the weight gradient one matmul per kernel row of the output gradient on
//! the wide grid (zeros in the extra columns) with X_dy transposed.

use super::gemm::{gemm, on_threads, Mat};
use super::window::Window;
use super::{write_init, Elem};
use std::mem::MaybeUninit;

/// Columns of the wide grid per chunk the chunk size aims at: large enough for efficient
/// matmuls, small enough that a chunk's buffers stay in the cache (ResNet-20 step, batch
/// 128: 256 to 1024 alike within the machine's noise, 2048 ~8% slower, 8192 ~25%).
const CHUNK_COLS: usize = 1024;

/// The geometry of a stride-1 convolution on the wide grid.
#[derive(Debug, Clone)]
pub(super) struct Wide {
    n: usize,
    c: usize,
    m: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    pt: usize,
    pl: usize,
    /// Zero rows before each sample, Ph = max(pt, pb), and after the last one, pb.
    ph: usize,
    pb: usize,
    /// Row stride in the chunk buffer: max(W, Wo).
    wq: usize,
    ho: usize,
    wo: usize,
    /// Values per sample in the chunk buffer: (H + Ph)·Wq.
    s: usize,
    /// Samples per chunk.
    nb: usize,
}

impl Wide {
    /// The geometry of `win` with `m` output channels, when the convolution has stride 1,
    /// dilation 1, one group, at most 2 spatial axes, and pads smaller than the kernel (so
    /// that its input gradient is one too); otherwise `None`.
    pub(super) fn of(win: &Window, m: usize, group: usize) -> Option<Wide> {
        let ok = group == 1
            && win.kernel[0] == 1
            && win.input[0] == 1
            && win.stride == [1; 3]
            && win.dil == [1; 3]
            && (1..3).all(|a| win.pad[a] < win.kernel[a] && win.pad_end[a] < win.kernel[a]);
        ok.then(|| {
            Self::new(
                win.n,
                win.c,
                m,
                [win.input[1], win.input[2]],
                [win.kernel[1], win.kernel[2]],
                [win.pad[1], win.pad[2], win.pad_end[1], win.pad_end[2]],
            )
        })
    }

    fn new(n: usize, c: usize, m: usize, hw: [usize; 2], k: [usize; 2], p: [usize; 4]) -> Wide {
        let ph = p[0].max(p[2]);
        let (ho, wo) = (
            hw[0] + p[0] + p[2] + 1 - k[0],
            hw[1] + p[1] + p[3] + 1 - k[1],
        );
        let wq = hw[1].max(wo);
        let s = (hw[0] + ph) * wq;
        Wide {
            n,
            c,
            m,
            h: hw[0],
            w: hw[1],
            kh: k[0],
            kw: k[1],
            pt: p[0],
            pl: p[1],
            ph,
            pb: p[2],
            wq,
            ho,
            wo,
            s,
            nb: CHUNK_COLS.div_ceil(s).clamp(1, n.max(1)),
        }
    }

    /// The convolution whose output is this one's input gradient: input the output
    /// gradient (M channels, Ho x Wo), kernel flipped and transposed, pads k − 1 − p.
    fn adjoint(&self) -> Wide {
        let pb = self.ho + self.kh - 1 - self.h - self.pt;
        let pr = self.wo + self.kw - 1 - self.w - self.pl;
        Self::new(
            self.n,
            self.m,
            self.c,
            [self.ho, self.wo],
            [self.kh, self.kw],
            [
                self.kh - 1 - self.pt,
                self.kw - 1 - self.pl,
                self.kh - 1 - pb,
                self.kw - 1 - pr,
            ],
        )
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Columns of the wide grid of a chunk of `nb` samples (the last sample's extra rows
    /// left out).
    fn cols(&self, nb: usize) -> usize {
        (nb - 1) * self.s + self.ho * self.wq
    }

    /// Values per buffer row of a chunk of `nb` samples: the samples, then the last one's
    /// bottom padding, pb zero rows. The largest read of [`Wide::matmuls`], B + (kh − 1)·Wq +
    /// cols − 1, is its last value (Ho = H + pt + pb + 1 − kh); a multiple of Wq.
    fn span(&self, nb: usize) -> usize {
        nb * self.s + self.pb * self.wq
    }

    /// Where the reads of tap (0, dx) start in a buffer row: B = (Ph − pt)·Wq.
    fn base(&self) -> usize {
        (self.ph - self.pt) * self.wq
    }

    /// Scratch for a chunk: the packed input (C·kw rows) and the wide grid (M rows).
    fn scratch(&self) -> usize {
        (self.c * self.kw + self.m) * self.span(self.nb)
    }

    /// Copy samples `n0 .. n0 + nb` of `x` (N, C, H, W) into `buf` as (C·kw, span): row
    /// c·kw + pl holds the chunk's planes of channel c in the flat layout (module doc), row
    /// c·kw + dx the same shifted by s = dx − pl (value t is flat value t + s), masked: zero
    /// where the column t mod Wq plus s falls outside 0..W (a tap reading across the edge of
    /// an image row, where the padding is), so one row block serves a whole kernel row.
    fn pack<T: Elem>(&self, x: &[T], n0: usize, nb: usize, buf: &mut [T]) {
        let (plane, span, wq) = (self.h * self.w, self.span(nb), self.wq);
        for c in 0..self.c {
            let block = &mut buf[c * self.kw * span..][..self.kw * span];
            let (before, rest) = block.split_at_mut(self.pl * span);
            let (flat, after) = rest.split_at_mut(span);
            for j in 0..nb {
                let src = &x[((n0 + j) * self.c + c) * plane..][..plane];
                let dst = &mut flat[j * self.s..][..self.s];
                place_rows(dst, src, self.w, wq, self.ph * wq);
            }
            flat[nb * self.s..].fill(T::zero());
            let rows = before.chunks_mut(span).chain(after.chunks_mut(span));
            for (dx, row) in (0..self.kw).filter(|&dx| dx != self.pl).zip(rows) {
                // Shift, then mask the columns `cut` (those with t mod Wq + s outside 0..W).
                // (A shift of a whole row or more, on inputs narrower than the kernel, masks
                // every value: `e` keeps the copy inside the row.)
                let cut = if dx > self.pl {
                    let d = dx - self.pl;
                    let e = d.min(span);
                    row[..span - e].copy_from_slice(&flat[e..]);
                    row[span - e..].fill(T::zero());
                    self.w.saturating_sub(d)..wq
                } else {
                    let d = self.pl - dx;
                    let e = d.min(span);
                    row[e..].copy_from_slice(&flat[..span - e]);
                    row[..e].fill(T::zero());
                    0..d.min(wq)
                };
                for r in row.chunks_mut(wq) {
                    r[cut.clone()].fill(T::zero());
                }
            }
        }
    }

    /// The weights as (M, kh, C, kw): the block of kernel row dy is one strided matrix
    /// (M x C·kw) that matches the rows of [`Wide::pack`].
    fn rows_first<T: Elem>(&self, wt: &[T]) -> Vec<T> {
        let mut wr = vec![T::zero(); wt.len()];
        for m in 0..self.m {
            for c in 0..self.c {
                for dy in 0..self.kh {
                    for dx in 0..self.kw {
                        let to = ((m * self.kh + dy) * self.c + c) * self.kw + dx;
                        wr[to] = wt[((m * self.c + c) * self.kh + dy) * self.kw + dx];
                    }
                }
            }
        }
        wr
    }

    /// `y_wide (M x cols) = sum over kernel rows dy of W_dy · X_dy` for a chunk packed in
    /// `xp`, `wr` from [`Wide::rows_first`].
    fn matmuls<T: Elem>(&self, wr: &[T], xp: &[T], nb: usize, yw: &mut [T], threads: bool) {
        let (cols, span, ck) = (self.cols(nb), self.span(nb), self.c * self.kw);
        for dy in 0..self.kh {
            let a = Mat::strided(&wr[dy * ck..], self.m, ck, (self.kh * ck) as isize, 1);
            let b = Mat::strided(
                &xp[self.base() + dy * self.wq..],
                ck,
                cols,
                span as isize,
                1,
            );
            gemm(&mut yw[..self.m * cols], a, b, dy > 0, threads);
        }
    }
}

/// Write the rows of `src` (each `w` long) into `dst` at `first`, `first + wp`, ... and zeros
/// everywhere else in `dst`: one pass over the buffer (the scratch buffers are reused, so
/// the zeros must be written, but clearing the whole buffer first wrote it twice).
fn place_rows<T: Elem>(dst: &mut [T], src: &[T], w: usize, wp: usize, first: usize) {
    let rows = src.len().checked_div(w).unwrap_or(0);
    if rows == 0 {
        dst.fill(T::zero());
        return;
    }
    dst[..first].fill(T::zero());
    for (r, row) in src.chunks(w).enumerate() {
        let at = first + r * wp;
        dst[at..at + w].copy_from_slice(row);
        let next = if r + 1 < rows { at + wp } else { dst.len() };
        dst[at + w..next].fill(T::zero());
    }
}

/// The forward pass: `y` (N, M, Ho, Wo) from `x` (N, C, H, W) and `wt` (M, C, kh, kw), then
/// `epilogue(m, row)` on each output row of channel m (bias, ReLU). Every value of `y` is
/// written (it need not be initialized).
pub(super) fn forward<T: Elem>(
    g: &Wide,
    x: &[T],
    wt: &[T],
    y: &mut [MaybeUninit<T>],
    epilogue: impl Fn(usize, &mut [T]) + Sync,
) {
    let out = g.m * g.ho * g.wo;
    let scratch = g.scratch();
    let wr = g.rows_first(wt);
    on_threads(
        y.chunks_mut(g.nb * out).collect(),
        scratch,
        |ci, ych: &mut [MaybeUninit<T>], threads, buf| {
            let nb = ych.len() / out;
            let (xp, yw) = buf.split_at_mut(g.c * g.kw * g.span(nb));
            g.pack(x, ci * g.nb, nb, xp);
            g.matmuls(&wr, xp, nb, yw, threads);
            let cols = g.cols(nb);
            for (j, yn) in ych.chunks_mut(out).enumerate() {
                for (m, ym) in yn.chunks_mut(g.ho * g.wo).enumerate() {
                    for (oy, row) in ym.chunks_mut(g.wo).enumerate() {
                        let src = &yw[m * cols + j * g.s + oy * g.wq..][..g.wo];
                        epilogue(m, write_init(row, src));
                    }
                }
            }
        },
    );
}

/// The input gradient `dx` (N, C, H, W) from the output gradient `gy` (N, M, Ho, Wo), every
/// value written.
pub(super) fn input_grad<T: Elem>(g: &Wide, gy: &[T], wt: &[T], dx: &mut [MaybeUninit<T>]) {
    let (k, adj) = (g.taps(), g.adjoint());
    // w'[c, m, tap] = w[m, c, k - 1 - tap]: transposed, flipped.
    let mut wf = vec![T::zero(); wt.len()];
    for m in 0..g.m {
        for c in 0..g.c {
            for t in 0..k {
                wf[(c * g.m + m) * k + t] = wt[(m * g.c + c) * k + k - 1 - t];
            }
        }
    }
    forward(&adj, gy, &wf, dx, |_, _| {});
}

/// The weight gradient (M, C, kh, kw) from `gy` (N, M, Ho, Wo) and `x` (N, C, H, W): one
/// partial sum per chunk, added in chunk order (the result does not depend on the number of
/// threads).
pub(super) fn weight_grad<T: Elem>(g: &Wide, gy: &[T], x: &[T]) -> Vec<T> {
    let (ck, size) = (g.c * g.kw, g.m * g.c * g.taps());
    let chunks = g.n.div_ceil(g.nb).max(1);
    let mut parts = vec![T::zero(); chunks * size];
    let scratch = g.scratch();
    on_threads(
        parts.chunks_mut(size).collect(),
        scratch,
        |ci, part: &mut [T], threads, buf| {
            let n0 = ci * g.nb;
            let nb = g.nb.min(g.n - n0);
            let span = g.span(nb);
            let (xp, gw) = buf.split_at_mut(ck * span);
            g.pack(x, n0, nb, xp);
            // The output gradient on the wide grid, zeros in its extra columns.
            let plane = g.ho * g.wo;
            for j in 0..nb {
                for m in 0..g.m {
                    let src = &gy[((n0 + j) * g.m + m) * plane..][..plane];
                    let dst = &mut gw[m * span + j * g.s..][..g.s];
                    place_rows(dst, src, g.wo, g.wq, 0);
                }
            }
            // Kernel row dy, transposed: (C·kw x M) = X_dy (C·kw x cols) · G^T. (The gemm
            // crate computes a row-major product as its transpose; this way round it packs
            // G, M rows, instead of X_dy, C·kw rows, and reads X_dy in place.)
            let cols = g.cols(nb);
            for dy in 0..g.kh {
                let a = Mat::strided(&xp[g.base() + dy * g.wq..], ck, cols, span as isize, 1);
                let b = Mat::strided(gw, g.m, cols, span as isize, 1).t();
                gemm(&mut part[dy * ck * g.m..][..ck * g.m], a, b, false, threads);
            }
        },
    );
    // Sum the chunks in order, then (kh, C, kw, M) -> (M, C, kh, kw).
    let (first, rest) = parts.split_at_mut(size);
    for part in rest.chunks(size) {
        for (a, b) in first.iter_mut().zip(part) {
            *a += *b;
        }
    }
    let mut dw = vec![T::zero(); size];
    for dy in 0..g.kh {
        for m in 0..g.m {
            for c in 0..g.c {
                for dx in 0..g.kw {
                    let from = ((dy * g.c + c) * g.kw + dx) * g.m + m;
                    dw[((m * g.c + c) * g.kh + dy) * g.kw + dx] = first[from];
                }
            }
        }
    }
    dw
}
