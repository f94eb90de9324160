//! The in-place update loops of the optimizers: plain SGD, Path-SGD's step (spec §7) and
//! the EC-SGD step of one tensor with its chains (spec §5 steps 1 to 4), each one fused,
//! multi-threaded pass, the element loops compiled for the CPU's widest vectors
//! (`exec::cpu::wide_fn`). The EC pass (`ec::program`) decides what the chains are; these
//! loops only run them.

use crate::error::Result;
use candle_core::Tensor;

/// One tensor to update in place: a layer weight or bias, with its chains.
pub struct UpdateTarget {
    pub name: String,
    /// Chain of each position along the chain axis, and the stride that finds it:
    /// chain = chain[(i / inner) % len]. Empty: no chain (the free layer, biases at or
    /// after it).
    pub chain: Vec<u32>,
    pub inner: usize,
    /// Scalars that do not move (designated weights, V), sorted flat indices. They are few:
    /// the fused pass updates everything, then puts these back.
    pub fixed: Vec<usize>,
    /// V scalars in this tensor, (chain, flat index), multiplied by R.
    pub v: Vec<(u32, usize)>,
}

/// Read access to a contiguous f32 tensor.
pub fn with_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(crate::Error::unsupported("update programs run on the CPU"));
    };
    let data = cpu.as_slice::<f32>()?;
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| crate::Error::exec("a parameter is not contiguous"))?;
    Ok(f(&data[a..b]))
}

/// Run `f` on the data of a contiguous f32 CPU tensor in place (a parameter's `Var`).
pub fn with_slice_mut(t: &Tensor, f: impl FnMut(&mut [f32])) -> Result<()> {
    struct Mutate<F>(std::sync::Mutex<F>);
    impl<F: FnMut(&mut [f32])> candle_core::InplaceOp1 for Mutate<F> {
        fn name(&self) -> &'static str {
            "ecc-mutate"
        }
        fn cpu_fwd(
            &self,
            storage: &mut candle_core::CpuStorage,
            layout: &candle_core::Layout,
        ) -> candle_core::Result<()> {
            let candle_core::CpuStorage::F32(data) = storage else {
                candle_core::bail!("in-place updates run in f32")
            };
            let (a, b) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
            (self.0.lock().expect("in-place closure"))(&mut data[a..b]);
            Ok(())
        }
    }
    Ok(t.inplace_op1(&Mutate(std::sync::Mutex::new(f)))?)
}

/// One SGD step on a parameter, in place, in one (multi-threaded) pass: with
/// d = g + wd * w, m <- mu * m + d, w <- w - lr * m (PyTorch's SGD; `m` starts at 0, so the
/// first step is w - lr * d). The same kernel as the update programs' unchained tensors.
/// With `gamma` (Path-SGD, spec §7), g is replaced by g / (|gamma| + 1e-12) in the same pass.
pub fn sgd_in_place(
    w: &Tensor,
    g: &Tensor,
    gamma: Option<&Tensor>,
    m: &mut Vec<f32>,
    lr: f32,
    mu: f32,
    wd: f32,
) -> Result<()> {
    let g = g.contiguous()?;
    if m.len() != g.elem_count() {
        *m = vec![0.0; g.elem_count()];
    }
    let t = UpdateTarget {
        name: String::new(),
        chain: vec![],
        inner: 1,
        fixed: vec![],
        v: vec![],
    };
    let gamma = gamma.map(|t| t.contiguous()).transpose()?;
    if gamma
        .as_ref()
        .is_some_and(|y| y.elem_count() != g.elem_count())
    {
        return Err(crate::Error::exec(
            "a gamma of another size than its gradient",
        ));
    }
    with_slice(&g, |gs| {
        let mut run = |ys: Option<&[f32]>| {
            let op = FusedUpdate {
                t: &t,
                g: gs,
                gamma: ys,
                m: std::sync::Mutex::new(m),
                v: &[],
                r: &[],
                rv: &[],
                lr,
                mu,
                wd,
            };
            with_slice_mut(w, |d| op.run(d))
        };
        match &gamma {
            Some(y) => with_slice(y, |ys| run(Some(ys))),
            None => Ok(run(None)),
        }
    })???;
    Ok(())
}

// The element loops of the update (spec §5 steps 2-4) and of the sum σ (step 1), each
// compiled for the CPU's widest vectors (`exec::cpu::wide_fn`).
use crate::exec::cpu::wide_fn;

wide_fn! {
    /// Unchained scalars: m <- mu m + g + wd w; w <- w - lr m.
    fn plain_update(w: &mut [f32], m: &mut [f32], g: &[f32], lr: f32, mu: f32, wd: f32) {
        for ((wi, mi), gi) in w.iter_mut().zip(m.iter_mut()).zip(g) {
            *mi = mu * *mi + gi + wd * *wi;
            *wi -= lr * *mi;
        }
    }
}

wide_fn! {
    /// Path-SGD's step (spec §7): the same with g / (|gamma| + 1e-12) for g.
    fn path_update(
        w: &mut [f32],
        m: &mut [f32],
        g: &[f32],
        gamma: &[f32],
        lr: f32,
        mu: f32,
        wd: f32,
    ) {
        for (((wi, mi), gi), yi) in w.iter_mut().zip(m.iter_mut()).zip(g).zip(gamma) {
            *mi = mu * *mi + gi / (yi.abs() + 1e-12) + wd * *wi;
            *wi -= lr * *mi;
        }
    }
}

wide_fn! {
    /// Scalars chained along the fastest axis (the columns of a row-major tensor), from
    /// position `pos` of a row on, with the factors 1/V, 1/R and V of every position:
    /// m <- mu m + g/V + wd w V; w <- (w - lr m / V) / R.
    #[allow(clippy::too_many_arguments)]
    fn chained_update_cols(
        w: &mut [f32],
        m: &mut [f32],
        g: &[f32],
        pos: usize,
        inv_v: &[f32],
        inv_r: &[f32],
        v: &[f32],
        lr: f32,
        mu: f32,
        wd: f32,
    ) {
        let (len, mut pos, mut i) = (inv_v.len(), pos, 0);
        while i < w.len() {
            // The rest of this row (only the first may start inside a row).
            let n = (len - pos).min(w.len() - i);
            let f = pos..pos + n;
            for (((((wi, mi), gi), iv), ir), v) in w[i..i + n]
                .iter_mut()
                .zip(&mut m[i..i + n])
                .zip(&g[i..i + n])
                .zip(&inv_v[f.clone()])
                .zip(&inv_r[f.clone()])
                .zip(&v[f])
            {
                *mi = mu * *mi + gi * iv + wd * *wi * v;
                *wi = (*wi - lr * *mi * iv) * ir;
            }
            i += n;
            pos = 0;
        }
    }
}

wide_fn! {
    /// Runs of `inner` scalars, run j on chain `chain[(pos + j) % chain.len()]`: the same
    /// update with that chain's V and R (`v`, `r` indexed by chain).
    #[allow(clippy::too_many_arguments)]
    fn chained_update_rows(
        w: &mut [f32],
        m: &mut [f32],
        g: &[f32],
        pos: usize,
        inner: usize,
        chain: &[u32],
        v: &[f32],
        r: &[f32],
        lr: f32,
        mu: f32,
        wd: f32,
    ) {
        let mut pos = pos;
        for ((wr, mr), gr) in w
            .chunks_mut(inner)
            .zip(m.chunks_mut(inner))
            .zip(g.chunks(inner))
        {
            let c = chain[pos] as usize;
            let (v, inv_v, inv_r) = (v[c], 1.0 / v[c], 1.0 / r[c]);
            for ((wi, mi), gi) in wr.iter_mut().zip(mr.iter_mut()).zip(gr) {
                *mi = mu * *mi + gi * inv_v + wd * *wi * v;
                *wi = (*wi - lr * *mi * inv_v) * inv_r;
            }
            pos += 1;
            if pos == chain.len() {
                pos = 0;
            }
        }
    }
}

wide_fn! {
    /// Column sums of w ⊙ g for a row-major tensor with rows of `acc.len()` positions,
    /// starting at position `pos` of a row: acc[p] += Σ w ⊙ g over position p. Summed in f32
    /// over up to 32 rows, then added into f64.
    fn column_products(acc: &mut [f64], w: &[f32], g: &[f32], pos: usize) {
        const ROWS: usize = 32;
        let len = acc.len();
        let mut part = vec![0f32; len];
        let (mut pos, mut i, mut rows) = (pos, 0, 0);
        while i < w.len() {
            // The rest of this row (only the first may start inside a row).
            let n = (len - pos).min(w.len() - i);
            for ((a, w), g) in part[pos..pos + n]
                .iter_mut()
                .zip(&w[i..i + n])
                .zip(&g[i..i + n])
            {
                *a += w * g;
            }
            i += n;
            pos = 0;
            rows += 1;
            if rows % ROWS == 0 || i == w.len() {
                for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
                    *a += *p as f64;
                    *p = 0.0;
                }
            }
        }
    }
}

wide_fn! {
    /// The dot product of two slices, in f64: sixteen f32 partial sums over the slices in a
    /// fixed order (a single running sum would be one dependent add per element), added in
    /// f64 at the end.
    fn dot(a: &[f32], b: &[f32]) -> f64 {
        const L: usize = 16;
        let mut acc = [0f32; L];
        let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
        let tail: f64 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum();
        for (x, y) in ca.zip(cb) {
            for j in 0..L {
                acc[j] += x[j] * y[j];
            }
        }
        acc.iter().map(|&v| v as f64).sum::<f64>() + tail
    }
}

/// Scalars per parallel chunk, and the size below which a tensor is done on one thread.
const RUN: usize = 8192;
const PARALLEL_FROM: usize = 32768;

/// The fused update of one tensor (spec §5 steps 2 to 4 for its scalars).
struct FusedUpdate<'a> {
    t: &'a UpdateTarget,
    g: &'a [f32],
    /// Path-SGD's gamma, for unchained tensors.
    gamma: Option<&'a [f32]>,
    m: std::sync::Mutex<&'a mut Vec<f32>>,
    v: &'a [f32],
    r: &'a [f32],
    /// R of each V scalar (`t.v` indexes it).
    rv: &'a [f32],
    lr: f32,
    mu: f32,
    wd: f32,
}

impl FusedUpdate<'_> {
    /// The update of one tensor's data `w`, in place (through [`with_slice_mut`]).
    fn run(&self, w: &mut [f32]) {
        use rayon::prelude::*;
        let mut guard = self.m.lock().expect("momentum lock");
        let m: &mut Vec<f32> = &mut guard;
        let t = self.t;
        let (lr, mu, wd) = (self.lr, self.mu, self.wd);
        let saved: Vec<(usize, f32, f32)> = t.fixed.iter().map(|&i| (i, w[i], m[i])).collect();
        let g = self.g;
        if t.chain.is_empty() {
            // Plain SGD, or Path-SGD's step with its gamma (chunk k covers RUN scalars from
            // k * RUN on).
            let body = |k: usize, wc: &mut [f32], mc: &mut [f32], gc: &[f32]| match self.gamma {
                Some(y) => path_update(wc, mc, gc, &y[k * RUN..][..wc.len()], lr, mu, wd),
                None => plain_update(wc, mc, gc, lr, mu, wd),
            };
            if w.len() < PARALLEL_FROM {
                body(0, w, m, g);
            } else {
                w.par_chunks_mut(RUN)
                    .zip(m.par_chunks_mut(RUN).zip(g.par_chunks(RUN)))
                    .enumerate()
                    .for_each(|(k, (wc, (mc, gc)))| body(k, wc, mc, gc));
            }
        } else {
            // Runs of `inner` consecutive scalars share one chain.
            let (inner, len) = (t.inner, t.chain.len());
            let runs_per_chunk = (RUN / inner).max(1);
            let chunk = runs_per_chunk * inner;
            // With chains along the fastest axis, the per-position factors 1/V, 1/R and V,
            // computed once, so the loop over a row is straight-line arithmetic; three
            // separate arrays (not one of triples), read with plain vector loads.
            let (v, r) = (self.v, self.r);
            let factor = |f: fn(f32, f32) -> f32| -> Vec<f32> {
                if inner != 1 {
                    return vec![];
                }
                t.chain
                    .iter()
                    .map(|&c| f(v[c as usize], r[c as usize]))
                    .collect()
            };
            let inv_v = factor(|v, _| 1.0 / v);
            let inv_r = factor(|_, r| 1.0 / r);
            let v_at = factor(|v, _| v);
            let body = |k: usize, wc: &mut [f32], mc: &mut [f32], gc: &[f32]| {
                let pos = (k * runs_per_chunk) % len;
                if inner == 1 {
                    chained_update_cols(wc, mc, gc, pos, &inv_v, &inv_r, &v_at, lr, mu, wd)
                } else {
                    chained_update_rows(wc, mc, gc, pos, inner, &t.chain, v, r, lr, mu, wd)
                }
            };
            if w.len() < PARALLEL_FROM {
                body(0, w, m, g);
            } else {
                w.par_chunks_mut(chunk)
                    .zip(m.par_chunks_mut(chunk).zip(g.par_chunks(chunk)))
                    .enumerate()
                    .for_each(|(k, (wc, (mc, gc)))| body(k, wc, mc, gc));
            }
        }
        for (i, wv, mv) in saved {
            w[i] = wv;
            m[i] = mv;
        }
        for &(k, i) in &t.v {
            w[i] *= self.rv[k as usize];
        }
    }
}

/// Σ w ⊙ g per chain over the chained scalars of `t` that move (spec §5 step 1, the ICR
/// sum σ), in f64: partial sums over fixed chunks, added in chunk order, so the result does
/// not depend on the threads.
pub fn chain_sums(t: &UpdateTarget, w: &Tensor, g: &Tensor, chains: usize) -> Result<Vec<f64>> {
    with_slice(w, |w| {
        with_slice(g, |g| {
            use rayon::prelude::*;
            let (inner, len) = (t.inner, t.chain.len());
            let runs_per_chunk = (RUN / inner).max(1);
            let chunk = runs_per_chunk * inner;
            let partial = |k: usize, wc: &[f32], gc: &[f32]| {
                let mut local = vec![0f64; chains];
                if inner == 1 {
                    // Chains along the fastest axis (columns of a row-major
                    // weight): sums per position over whole rows, then
                    // positions mapped to chains.
                    let mut acc = vec![0f64; len];
                    column_products(&mut acc, wc, gc, (k * runs_per_chunk) % len);
                    for (a, &c) in acc.iter().zip(&t.chain) {
                        local[c as usize] += a;
                    }
                    return local;
                }
                let mut pos = (k * runs_per_chunk) % len;
                for (wr, gr) in wc.chunks(inner).zip(gc.chunks(inner)) {
                    local[t.chain[pos] as usize] += dot(wr, gr);
                    pos += 1;
                    if pos == len {
                        pos = 0;
                    }
                }
                local
            };
            // Partial sums in chunk order, added in that order: the result does
            // not depend on how the threads split the work.
            let parts: Vec<Vec<f64>> = if w.len() < PARALLEL_FROM {
                vec![partial(0, w, g)]
            } else {
                w.par_chunks(chunk)
                    .zip(g.par_chunks(chunk))
                    .enumerate()
                    .map(|(k, (wc, gc))| partial(k, wc, gc))
                    .collect()
            };
            let mut total = parts.into_iter().fold(vec![0f64; chains], |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            });
            // The constant scalars do not count.
            for &i in &t.fixed {
                total[t.chain[(i / inner) % len] as usize] -= w[i] as f64 * g[i] as f64;
            }
            total
        })
    })?
}

/// The per-chain and per-V factors of one step: P_c (the chain's value), R_c (its ratio
/// after the step), and R_k of every V scalar.
pub struct Factors<'a> {
    pub v: &'a [f32],
    pub r: &'a [f32],
    pub rv: &'a [f32],
}

/// Run the fused update of one tensor `w` in place: momentum `m`, the chains' P and R (empty
/// for an unchained tensor), the V's R.
#[allow(clippy::too_many_arguments)]
pub fn fused_update(
    w: &Tensor,
    t: &UpdateTarget,
    g: &Tensor,
    m: &mut Vec<f32>,
    f: &Factors,
    lr: f32,
    mu: f32,
    wd: f32,
) -> Result<()> {
    with_slice(g, |gs| {
        let op = FusedUpdate {
            t,
            g: gs,
            gamma: None,
            m: std::sync::Mutex::new(m),
            v: f.v,
            r: f.r,
            rv: f.rv,
            lr,
            mu,
            wd,
        };
        with_slice_mut(w, |d| op.run(d))
    })??;
    Ok(())
}

/// The SGD half of [`balanced_pass`]: momentum buffer, gradient and settings.
pub struct SgdArgs<'a> {
    pub m: &'a mut [f32],
    pub g: &'a [f32],
    pub lr: f32,
    pub mu: f32,
    pub wd: f32,
}

/// Scalars per block of rows in [`balanced_pass`] (at least one row), on one thread or on
/// all.
const BALANCE_BLOCK: usize = 8192;

/// The tensor size from which [`balanced_pass`] runs its blocks on all threads. Small
/// blocks there too, as SGD's pass has them (8192 scalars): a thread that comes late to
/// the pass then leaves the other a block more, not half the tensor. Measured with `ecc
/// bench train --case mlp-784-64x4-10 --optimizers sgd,ec-sgd,balanced-sgd --runs 1000`,
/// three runs each (784 x 64 in 7 blocks against 2 blocks of 32 rows): balanced SGD's step
/// over SGD's 1.030, 1.032, 1.034 against 1.052, 1.057, 1.046; MLP 784-512-512-10 a little
/// slower (1.027 and 1.029 against 1.021 twice: more blocks' sums to add).
const BALANCE_PARALLEL_FROM: usize = 32_768;

/// A block of rows in [`balanced_pass`]: w, and m and g (empty without SGD).
type Rows<'a> = (&'a mut [f32], &'a mut [f32], &'a [f32]);

/// Balanced SGD's pass over one tensor of `rows.len()` rows (`ec::balance`, one damped
/// balancing iteration): with `sgd`, first SGD as in [`sgd_in_place`] (m ← μm + g + λw,
/// w ← w − ηm), then w (and m) times `rows[r]` · `cols[j]`, `cols` one line of factors for
/// the scalars of a row, one per scalar of the tensor (a grouped conv), or none (all 1).
/// Returns the squares of the new w summed per row (with `count.0`) and per position of
/// `cols` (with `count.1`), empty otherwise. One pass, in blocks of rows (on all threads for
/// large tensors) whose sums are added in block order, so the result does not depend on the
/// number of threads.
pub fn balanced_pass(
    w: &mut [f32],
    sgd: Option<SgdArgs<'_>>,
    rows: &[f32],
    cols: &[f32],
    count: (bool, bool),
) -> (Vec<f64>, Vec<f64>) {
    use rayon::prelude::*;
    let (count_rows, count) = count;
    let d0 = rows.len().max(1);
    let len = w.len() / d0;
    assert!(
        w.len() == d0 * len && (cols.is_empty() || cols.len() == len || cols.len() == w.len()),
        "balanced_pass: factors of another shape"
    );
    let per_row = cols.len() == w.len() && d0 > 1 && len > 0;
    let big = w.len() >= BALANCE_PARALLEL_FROM;
    // Blocks of whole rows, BALANCE_BLOCK scalars or one row (the partition depends on the
    // shape only, never on the threads).
    let rows_per = (BALANCE_BLOCK / len.max(1)).max(1);
    let (lr, mu, wd) = sgd.as_ref().map_or((0.0, 0.0, 0.0), |a| (a.lr, a.mu, a.wd));
    // Block b of rows: its w, and its m and g (empty without SGD).
    let block = |(b, (wc, mc, gc)): (usize, Rows<'_>)| {
        let n = wc.len() / len.max(1);
        let mut sq = vec![
            0f32;
            if !count {
                0
            } else if per_row {
                wc.len()
            } else {
                len
            }
        ];
        let mut sums = Vec::with_capacity(if count_rows { n } else { 0 });
        if len == 1 {
            // Rows of one scalar (biases, BN's per-channel vectors): the same operations
            // as [`balanced_row`] on each, without a call per scalar (that was ~25 ns a
            // row: about 6 µs a step for the 256 bias scalars of the small MLP).
            let rows = &rows[b * rows_per..][..n];
            for (i, (wi, &fr)) in wc.iter_mut().zip(rows).enumerate() {
                let k = match (per_row, cols.is_empty()) {
                    (_, true) => fr,
                    (true, false) => fr * cols[b * rows_per + i],
                    (false, false) => fr * cols[0],
                };
                if mc.is_empty() {
                    *wi *= k;
                } else {
                    (*wi, mc[i]) = sgd_scaled(*wi, mc[i], gc[i], k, lr, mu, wd);
                }
                let q = *wi * *wi;
                match (count, per_row) {
                    (false, _) => {}
                    (true, true) => sq[i] += q,
                    (true, false) => sq[0] += q,
                }
                if count_rows {
                    sums.push(q as f64);
                }
            }
            return (sums, sq);
        }
        for i in 0..n {
            let r = b * rows_per + i;
            let f = if per_row {
                &cols[r * len..][..len]
            } else {
                cols
            };
            let s = if per_row && count {
                &mut sq[i * len..][..len]
            } else {
                &mut sq[..]
            };
            let row = i * len..(i + 1) * len;
            let (m, g) = match mc.is_empty() {
                true => (&mut [][..], &[][..]),
                false => (&mut mc[row.clone()], &gc[row.clone()]),
            };
            let q = balanced_row(&mut wc[row], m, g, f, rows[r], lr, mu, wd, s, count_rows);
            if count_rows {
                sums.push(q as f64);
            }
        }
        (sums, sq)
    };
    let chunk = rows_per * len.max(1);
    let items: Vec<Rows<'_>> = match sgd {
        Some(a) => {
            assert!(
                a.m.len() == w.len() && a.g.len() == w.len(),
                "balanced_pass: sizes"
            );
            w.chunks_mut(chunk)
                .zip(a.m.chunks_mut(chunk))
                .zip(a.g.chunks(chunk))
                .map(|((wc, mc), gc)| (wc, mc, gc))
                .collect()
        }
        None => w
            .chunks_mut(chunk)
            .map(|wc| (wc, &mut [][..], &[][..]))
            .collect(),
    };
    let parts: Vec<(Vec<f64>, Vec<f32>)> = if big {
        items.into_par_iter().enumerate().map(block).collect()
    } else {
        items.into_iter().enumerate().map(block).collect()
    };
    let mut sums = Vec::with_capacity(if count_rows { d0 } else { 0 });
    let mut sq = vec![0f64; if !count { 0 } else { cols.len() }];
    let mut at = 0;
    for (s, q) in parts {
        sums.extend(s);
        if per_row {
            for (a, b) in sq[at..].iter_mut().zip(&q) {
                *a += *b as f64;
            }
            at += q.len();
        } else {
            for (a, b) in sq.iter_mut().zip(&q) {
                *a += *b as f64;
            }
        }
    }
    (sums, sq)
}

wide_fn! {
    /// One row of [`balanced_pass`]: SGD unless `m` is empty, the factors `fr · f[j]` (on m
    /// too), the squares of the new w added to `sq` (unless it is empty) and, with `total`,
    /// summed in eight lanes.
    #[allow(clippy::too_many_arguments)]
    fn balanced_row(
        w: &mut [f32],
        m: &mut [f32],
        g: &[f32],
        f: &[f32],
        fr: f32,
        lr: f32,
        mu: f32,
        wd: f32,
        sq: &mut [f32],
        total: bool,
    ) -> f32 {
        // The two combinations of training (SGD, the row summed): one fused pass, the
        // same operations in the same order as [`loops_row`] (tested bit for bit).
        let n = w.len();
        let both = (f.is_empty() && sq.is_empty()) || (f.len() == n && sq.len() == n);
        if !m.is_empty() && total && both {
            return fused_row(w, m, g, f, fr, lr, mu, wd, sq);
        }
        loops_row(w, m, g, f, fr, lr, mu, wd, sq, total)
    }
}

/// One scalar of [`balanced_pass`]'s SGD: m' = μm + g + λw, then w ← (w − η·m')·k and
/// m ← m'·k (k the row's factor times the column's), in that order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn sgd_scaled(w: f32, m: f32, g: f32, k: f32, lr: f32, mu: f32, wd: f32) -> (f32, f32) {
    let mi = mu * m + g + wd * w;
    ((w - lr * mi) * k, mi * k)
}

/// [`balanced_row`] as separate loops: the update, the squares, the sum.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn loops_row(
    w: &mut [f32],
    m: &mut [f32],
    g: &[f32],
    f: &[f32],
    fr: f32,
    lr: f32,
    mu: f32,
    wd: f32,
    sq: &mut [f32],
    total: bool,
) -> f32 {
    if f.is_empty() {
        // The row's factor alone (no column factors).
        if m.is_empty() {
            w.iter_mut().for_each(|wi| *wi *= fr);
        } else {
            for ((wi, mi), gi) in w.iter_mut().zip(m.iter_mut()).zip(g) {
                (*wi, *mi) = sgd_scaled(*wi, *mi, *gi, fr, lr, mu, wd);
            }
        }
    } else if m.is_empty() {
        for (wi, fi) in w.iter_mut().zip(f) {
            *wi *= fr * fi;
        }
    } else {
        for (((wi, mi), gi), fi) in w.iter_mut().zip(m.iter_mut()).zip(g).zip(f) {
            (*wi, *mi) = sgd_scaled(*wi, *mi, *gi, fr * fi, lr, mu, wd);
        }
    }
    for (s, wi) in sq.iter_mut().zip(w.iter()) {
        *s += wi * wi;
    }
    if !total {
        return 0.0;
    }
    let mut lanes = [0f32; 8];
    let chunks = w.chunks_exact(8);
    let mut total = 0f32;
    for x in chunks.remainder() {
        total += x * x;
    }
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x * x;
        }
    }
    for l in lanes {
        total += l;
    }
    total
}

/// [`balanced_row`] with SGD and the row's sum, in one pass: with column factors `f` and
/// their squares `sq` (both as long as the row), or with neither. Eight lanes for the sum,
/// the remainder first, as there.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fused_row(
    w: &mut [f32],
    m: &mut [f32],
    g: &[f32],
    f: &[f32],
    fr: f32,
    lr: f32,
    mu: f32,
    wd: f32,
    sq: &mut [f32],
) -> f32 {
    let n = w.len();
    let full = n / 8 * 8;
    let mut lanes = [0f32; 8];
    let mut total = 0f32;
    if f.is_empty() {
        let (w, m, g) = (&mut w[..n], &mut m[..n], &g[..n]);
        for j in full..n {
            (w[j], m[j]) = sgd_scaled(w[j], m[j], g[j], fr, lr, mu, wd);
            total += w[j] * w[j];
        }
        let (wc, mc, gc) = (
            w[..full].chunks_exact_mut(8),
            m[..full].chunks_exact_mut(8),
            g[..full].chunks_exact(8),
        );
        for ((wc, mc), gc) in wc.zip(mc).zip(gc) {
            for l in 0..8 {
                (wc[l], mc[l]) = sgd_scaled(wc[l], mc[l], gc[l], fr, lr, mu, wd);
                lanes[l] += wc[l] * wc[l];
            }
        }
    } else {
        let (w, m, g, f, sq) = (&mut w[..n], &mut m[..n], &g[..n], &f[..n], &mut sq[..n]);
        for j in full..n {
            (w[j], m[j]) = sgd_scaled(w[j], m[j], g[j], fr * f[j], lr, mu, wd);
            sq[j] += w[j] * w[j];
            total += w[j] * w[j];
        }
        let chunks = w[..full]
            .chunks_exact_mut(8)
            .zip(m[..full].chunks_exact_mut(8))
            .zip(g[..full].chunks_exact(8))
            .zip(f[..full].chunks_exact(8))
            .zip(sq[..full].chunks_exact_mut(8));
        for ((((wc, mc), gc), fc), sc) in chunks {
            for l in 0..8 {
                (wc[l], mc[l]) = sgd_scaled(wc[l], mc[l], gc[l], fr * fc[l], lr, mu, wd);
                sc[l] += wc[l] * wc[l];
                lanes[l] += wc[l] * wc[l];
            }
        }
    }
    for l in lanes {
        total += l;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A tensor large enough to run on all threads gives the same bits on one thread as on
    /// three (its blocks depend on its shape only).
    #[test]
    fn balanced_pass_does_not_depend_on_the_threads() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (d0, len) = (64, 784);
        let n = d0 * len;
        assert!(n >= BALANCE_PARALLEL_FROM);
        let mut v = |n: usize, a: f32| (0..n).map(|_| rng.gen_range(-a..a)).collect::<Vec<f32>>();
        let (w, m, g) = (v(n, 1.0), v(n, 0.1), v(n, 0.1));
        let rows: Vec<f32> = v(d0, 0.1).iter().map(|x| 1.0 + x).collect();
        let cols: Vec<f32> = v(len, 0.1).iter().map(|x| 1.0 + x).collect();
        let run = |threads: usize| {
            crate::exec::kernels::testing::with_threads(threads, || {
                let (mut w, mut m) = (w.clone(), m.clone());
                let sgd = SgdArgs {
                    m: &mut m,
                    g: &g,
                    lr: 0.05,
                    mu: 0.9,
                    wd: 1e-3,
                };
                let sums = balanced_pass(&mut w, Some(sgd), &rows, &cols, (true, true));
                (w, m, sums)
            })
        };
        let (a, b) = (run(1), run(3));
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.1), bits(&b.1));
        assert_eq!(a.2, b.2);
    }

    /// The fused row is the separate loops, bit for bit (values and sums), for every row
    /// length around the eight lanes, with and without column factors.
    #[test]
    fn fused_row_is_the_loops_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v = |n: usize, a: f32| (0..n).map(|_| rng.gen_range(-a..a)).collect::<Vec<f32>>();
        for n in 1..41 {
            for cols in [false, true] {
                let (w, m, g) = (v(n, 1.0), v(n, 0.1), v(n, 0.1));
                let f: Vec<f32> = if cols {
                    v(n, 0.1).iter().map(|x| 1.0 + x).collect()
                } else {
                    vec![]
                };
                let sq = if cols {
                    v(n, 1.0).iter().map(|x| x * x).collect()
                } else {
                    vec![]
                };
                let (mut w1, mut m1, mut sq1) = (w.clone(), m.clone(), sq.clone());
                let (mut w2, mut m2, mut sq2) = (w, m, sq);
                let (lr, mu, wd, fr) = (0.05, 0.9, 1e-3, 1.0007);
                let a = fused_row(&mut w1, &mut m1, &g, &f, fr, lr, mu, wd, &mut sq1);
                let b = loops_row(&mut w2, &mut m2, &g, &f, fr, lr, mu, wd, &mut sq2, true);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(a.to_bits(), b.to_bits(), "sum, n {n}, cols {cols}");
                assert_eq!(bits(&w1), bits(&w2), "w, n {n}, cols {cols}");
                assert_eq!(bits(&m1), bits(&m2), "m, n {n}, cols {cols}");
                assert_eq!(bits(&sq1), bits(&sq2), "sq, n {n}, cols {cols}");
            }
        }
    }

    /// Rows of one scalar take their own loop in [`balanced_pass`]: the same bits as
    /// [`balanced_row`] on each row, with and without SGD, with no column factor, one for
    /// all rows, or one per row, counting rows and columns or not, across several blocks.
    #[test]
    fn one_scalar_rows_are_the_row_kernel_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut v = |n: usize, a: f32| (0..n).map(|_| rng.gen_range(-a..a)).collect::<Vec<f32>>();
        let n = BALANCE_BLOCK + 37;
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (w, m, g) = (v(n, 1.0), v(n, 0.1), v(n, 0.1));
        let rows: Vec<f32> = v(n, 0.1).iter().map(|x| 1.0 + x).collect();
        let per: Vec<f32> = v(n, 0.1).iter().map(|x| 1.0 + x).collect();
        let (lr, mu, wd) = (0.05, 0.9, 1e-3);
        for cols in [vec![], vec![1.03], per] {
            for sgd in [false, true] {
                for count in [(false, false), (true, false), (false, true), (true, true)] {
                    let (mut w1, mut m1) = (w.clone(), m.clone());
                    let args = SgdArgs {
                        m: &mut m1,
                        g: &g,
                        lr,
                        mu,
                        wd,
                    };
                    let (sums, sq) =
                        balanced_pass(&mut w1, sgd.then_some(args), &rows, &cols, count);
                    // The reference: the row kernel on each scalar, the sums as the general
                    // path adds them (column squares in f32 per block, then in f64).
                    let (mut w2, mut m2) = (w.clone(), m.clone());
                    let mut sums2 = vec![];
                    let mut sq2 = vec![0f64; if count.1 { cols.len() } else { 0 }];
                    for (b, block) in (0..n).collect::<Vec<_>>().chunks(BALANCE_BLOCK).enumerate() {
                        let mut part = vec![
                            0f32;
                            if !count.1 {
                                0
                            } else if cols.len() == n {
                                block.len()
                            } else {
                                1
                            }
                        ];
                        for (i, &r) in block.iter().enumerate() {
                            let f = match cols.len() {
                                0 => &[][..],
                                1 => &cols[..],
                                _ => &cols[r..r + 1],
                            };
                            let s = match part.len() {
                                0 => &mut [][..],
                                1 if cols.len() != n => &mut part[..],
                                _ => &mut part[i..i + 1],
                            };
                            let (mm, gg) = match sgd {
                                true => (&mut m2[r..r + 1], &g[r..r + 1]),
                                false => (&mut [][..], &[][..]),
                            };
                            let q = balanced_row(
                                &mut w2[r..r + 1],
                                mm,
                                gg,
                                f,
                                rows[r],
                                lr,
                                mu,
                                wd,
                                s,
                                count.0,
                            );
                            if count.0 {
                                sums2.push(q as f64);
                            }
                        }
                        let at = if cols.len() == n {
                            b * BALANCE_BLOCK
                        } else {
                            0
                        };
                        for (a, p) in sq2.iter_mut().skip(at).zip(&part) {
                            *a += *p as f64;
                        }
                    }
                    let what = format!("cols {}, sgd {sgd}, count {count:?}", cols.len());
                    assert_eq!(bits(&w1), bits(&w2), "w, {what}");
                    assert_eq!(bits(&m1), bits(&m2), "m, {what}");
                    assert_eq!(sums, sums2, "row sums, {what}");
                    assert_eq!(sq, sq2, "column sums, {what}");
                }
            }
        }
    }
}
