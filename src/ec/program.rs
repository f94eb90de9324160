//! Update programs: one EC-SGD step of a block (spec §5) as a short program of whole-tensor
//! operations (gathers, per-chain reductions, elementwise formulas), with a readable text
//! form, run with candle on the executor's `Var`s. [`super::step::EcStep`] is the f64
//! definition the programs are tested against.
//!
//! Per weight layer the program needs: the chain of every scalar (per output channel before
//! the free layer, per input position after it; none in it), the scalars held constant
//! (designated weights; V in the free layer), and for biases before the free layer the chain
//! of each output.

use super::skeleton::skeleton;
use super::EcPlan;
use crate::analysis::Analysis;
use crate::error::Result;
use crate::ir::Graph;
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

/// Where a layer sits relative to the free layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Before,
    Free,
    After,
}

#[derive(Debug, Clone)]
pub struct LayerProgram {
    pub label: String,
    pub weight: String,
    pub bias: Option<String>,
    pub region: Region,
    pub dims: Vec<usize>,
    /// The axis the chain index runs along (output axis before s, input axis after s).
    pub chain_axis: usize,
    /// Chain of each position along `chain_axis` (empty in the free layer).
    pub chain: Vec<u32>,
    /// Flat indices held constant.
    pub fixed: Vec<usize>,
    /// Chain of each bias entry (before the free layer only).
    pub bias_chain: Option<Vec<u32>>,
}

#[derive(Debug, Clone)]
pub struct UpdateProgram {
    pub block: usize,
    pub chains: usize,
    pub free_weight: String,
    /// V_j as flat indices of the free layer's weight.
    pub v: Vec<usize>,
    pub layers: Vec<LayerProgram>,
}

/// The programs of a plan's blocks.
pub fn programs(g: &Graph, a: &Analysis, plan: &EcPlan) -> Vec<UpdateProgram> {
    plan.blocks
        .iter()
        .enumerate()
        .map(|(bi, b)| {
            let sk = skeleton(g, a, b);
            let mut fixed: Vec<Vec<usize>> = vec![vec![]; b.layers.len()];
            for (l, ds) in b.designated.iter().enumerate() {
                for d in ds {
                    fixed[if d.incoming { l } else { l + 1 }].push(d.weight.index);
                }
            }
            fixed[b.free].extend(sk.v.iter().copied());
            let layers = sk
                .geo
                .iter()
                .enumerate()
                .map(|(l, geo)| {
                    let region = match l.cmp(&b.free) {
                        std::cmp::Ordering::Less => Region::Before,
                        std::cmp::Ordering::Equal => Region::Free,
                        std::cmp::Ordering::Greater => Region::After,
                    };
                    let (chain_axis, chain) = match region {
                        Region::Before => (
                            geo.out_axis,
                            sk.chains[l].iter().map(|&c| c as u32).collect(),
                        ),
                        Region::Free => (geo.out_axis, vec![]),
                        Region::After => {
                            let per = geo.in_channels * geo.in_block;
                            let len = geo.dims[geo.in_axis];
                            (
                                geo.in_axis,
                                (0..len)
                                    .map(|pos| sk.chains[l - 1][(pos % per) / geo.in_block] as u32)
                                    .collect(),
                            )
                        }
                    };
                    let mut f = fixed[l].clone();
                    f.sort_unstable();
                    LayerProgram {
                        label: g.node_label(b.layers[l]),
                        weight: geo.weight.clone(),
                        bias: geo.bias.clone(),
                        region,
                        dims: geo.dims.clone(),
                        chain_axis,
                        chain,
                        fixed: f,
                        bias_chain: (region == Region::Before && geo.bias.is_some())
                            .then(|| sk.chains[l].iter().map(|&c| c as u32).collect()),
                    }
                })
                .collect();
            UpdateProgram {
                block: bi,
                chains: sk.v.len(),
                free_weight: sk.geo[b.free].weight.clone(),
                v: sk.v.clone(),
                layers,
            }
        })
        .collect()
}

impl UpdateProgram {
    /// The readable form.
    pub fn text(&self) -> String {
        let mut s = format!(
            "program block {}: {} chains, free layer weight {}\n",
            self.block, self.chains, self.free_weight
        );
        s += &format!(
            "  V   := gather({}, {} skeleton scalars)\n",
            self.free_weight,
            self.v.len()
        );
        s += &format!("  gV  := gather(∂{}, same scalars)\n", self.free_weight);
        s += "  σ   := 0 per chain\n";
        let dims = |d: &[usize]| {
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        for l in &self.layers {
            let axis = if l.chain_axis == 0 { "row" } else { "column" };
            match l.region {
                Region::Before | Region::After => {
                    let by = if l.region == Region::Before {
                        "output unit"
                    } else {
                        "input unit"
                    };
                    let side = if l.region == Region::Before {
                        "before"
                    } else {
                        "after"
                    };
                    s += &format!(
                        "  # {} [{}] {side} the free layer: chain by {by} ({axis} axis {})\n",
                        l.weight,
                        dims(&l.dims),
                        l.chain_axis
                    );
                    s += &format!(
                        "  dp  := ∂{w} / V[chain]              (0 on {} designated scalars)\n",
                        l.fixed.len(),
                        w = l.weight
                    );
                    s += &format!("  σ   += sum_by_chain({w} ⊙ ∂{w})\n", w = l.weight);
                }
                Region::Free => {
                    s += &format!("  # {} [{}] the free layer\n", l.weight, dims(&l.dims));
                    s += &format!(
                        "  dp  := ∂{}                           (0 on the {} V scalars)\n",
                        l.weight,
                        l.fixed.len()
                    );
                }
            }
            if let Some(b) = &l.bias {
                if l.bias_chain.is_some() {
                    s += &format!("  dp  := ∂{b} / V[chain];  σ += sum_by_chain({b} ⊙ ∂{b})\n");
                } else {
                    s += &format!("  dp  := ∂{b}\n");
                }
            }
        }
        s += "  dV  := (V ⊙ gV − σ) / V\n";
        s += "  mV  := μ·mV + dV\n";
        s += "  R   := guard(1 − η·mV / V, floor)      # R below the floor (or NaN) is the floor, counted\n";
        for l in &self.layers {
            let p = if l.region == Region::Free {
                "w"
            } else {
                "w ⊙ V[chain]"
            };
            s += &format!("  {}: m := μ·m + dp + λ·({p});  ", l.weight);
            s += match l.region {
                Region::Free => "w := w − η·m except the V scalars;  V scalars := V ⊙ R\n",
                _ => "w := (w − η·m / V[chain]) / R[chain] except the designated\n",
            };
            if let Some(b) = &l.bias {
                s += &match l.bias_chain {
                    Some(_) => format!("  {b}: m := μ·m + dp + λ·(b ⊙ V[chain]);  b := (b − η·m / V[chain]) / R[chain]\n"),
                    None => format!("  {b}: m := μ·m + dp + λ·b;  b := b − η·m\n"),
                };
            }
        }
        s
    }
}

/// One tensor to update in place: a layer weight or bias, with its chains.
struct Target {
    name: String,
    /// Chain of each position along the chain axis, and the stride that finds it:
    /// chain = chain[(i / inner) % len]. Empty: no chain (the free layer, biases at or
    /// after it).
    chain: Vec<u32>,
    inner: usize,
    /// Scalars that do not move (designated weights, V), sorted flat indices. They are few:
    /// the fused pass updates everything, then puts these back.
    fixed: Vec<usize>,
    /// V scalars of the free layer (flat index per chain), multiplied by R.
    v: Vec<usize>,
}

/// Runs update programs on the executor's parameters: one fused, multi-threaded pass over
/// each parameter tensor, in place.
pub struct ProgramRunner {
    programs: Vec<UpdateProgram>,
    targets: Vec<Vec<Target>>,
    momentum: HashMap<String, Vec<f32>>,
    mv: Vec<Vec<f32>>,
    /// Steps in which the guard replaced some R.
    pub guarded_steps: usize,
}

/// Read access to a contiguous f32 tensor.
fn with_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
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
    let t = Target {
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
            let op = Fused {
                t: &t,
                g: gs,
                gamma: ys,
                m: std::sync::Mutex::new(m),
                v: &[],
                r: &[],
                lr,
                mu,
                wd,
            };
            w.inplace_op1(&op)
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
struct Fused<'a> {
    t: &'a Target,
    g: &'a [f32],
    /// Path-SGD's gamma, for unchained tensors.
    gamma: Option<&'a [f32]>,
    m: std::sync::Mutex<&'a mut Vec<f32>>,
    v: &'a [f32],
    r: &'a [f32],
    lr: f32,
    mu: f32,
    wd: f32,
}

impl candle_core::InplaceOp1 for Fused<'_> {
    fn name(&self) -> &'static str {
        "ecc-ec-sgd-update"
    }
    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("update programs run in f32")
        };
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
        let w = &mut data[a..b];
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
        for (c, &i) in t.v.iter().enumerate() {
            w[i] *= self.r[c];
        }
        Ok(())
    }
}

impl ProgramRunner {
    pub fn new(programs: Vec<UpdateProgram>) -> Result<Self> {
        let mut targets = vec![];
        for p in &programs {
            let mut ts = vec![];
            for l in &p.layers {
                let fixed = l.fixed.clone();
                ts.push(Target {
                    name: l.weight.clone(),
                    chain: l.chain.clone(),
                    inner: l.dims[l.chain_axis + 1..].iter().product(),
                    fixed,
                    v: if l.region == Region::Free {
                        p.v.clone()
                    } else {
                        vec![]
                    },
                });
                if let Some(b) = &l.bias {
                    ts.push(Target {
                        name: b.clone(),
                        chain: l.bias_chain.clone().unwrap_or_default(),
                        inner: 1,
                        fixed: vec![],
                        v: vec![],
                    });
                }
            }
            targets.push(ts);
        }
        let mv = programs.iter().map(|p| vec![0f32; p.chains]).collect();
        Ok(ProgramRunner {
            programs,
            targets,
            momentum: HashMap::new(),
            mv,
            guarded_steps: 0,
        })
    }

    pub fn programs(&self) -> &[UpdateProgram] {
        &self.programs
    }

    /// Momentum state for a checkpoint: `ec/m/<param>` and `ec/mv/<block>`, and the count of
    /// guarded steps as `ec/guarded`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut s = HashMap::new();
        for (k, v) in &self.momentum {
            if let Ok(t) = Tensor::new(v.as_slice(), &Device::Cpu) {
                s.insert(format!("ec/m/{k}"), t);
            }
        }
        for (i, v) in self.mv.iter().enumerate() {
            if let Ok(t) = Tensor::new(v.as_slice(), &Device::Cpu) {
                s.insert(format!("ec/mv/{i}"), t);
            }
        }
        if let Ok(t) = Tensor::new(&[self.guarded_steps as u32], &Device::Cpu) {
            s.insert("ec/guarded".into(), t);
        }
        s
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.momentum.clear();
        for (k, v) in state {
            if let Some(name) = k.strip_prefix("ec/m/") {
                self.momentum
                    .insert(name.to_string(), v.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        for (i, mv) in self.mv.iter_mut().enumerate() {
            if let Some(t) = state.get(&format!("ec/mv/{i}")) {
                *mv = t.to_vec1::<f32>()?;
            }
        }
        if let Some(t) = state.get("ec/guarded") {
            self.guarded_steps = t.to_vec1::<u32>()?[0] as usize;
        }
        Ok(())
    }

    /// One EC-SGD step of every block. `grads` by parameter name. Returns the number of
    /// chains whose R the guard replaced.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        cfg: &super::step::StepConfig,
    ) -> Result<usize> {
        let (lr, mu, wd) = (cfg.lr as f32, cfg.momentum as f32, cfg.weight_decay as f32);
        let mut guarded = 0usize;
        for (bi, (p, ts)) in self.programs.iter().zip(&self.targets).enumerate() {
            let v: Vec<f32> = with_slice(params[&p.free_weight].as_tensor(), |w| {
                p.v.iter().map(|&i| w[i]).collect()
            })?;
            let gv: Vec<f32> = with_slice(&grads[&p.free_weight], |g| {
                p.v.iter().map(|&i| g[i]).collect()
            })?;
            // ICR: sigma per chain over the chained scalars that move.
            let mut sigma = vec![0f64; p.chains];
            for t in ts.iter().filter(|t| !t.chain.is_empty()) {
                let part = with_slice(params[&t.name].as_tensor(), |w| {
                    with_slice(&grads[&t.name], |g| {
                        use rayon::prelude::*;
                        let (inner, len) = (t.inner, t.chain.len());
                        let runs_per_chunk = (RUN / inner).max(1);
                        let chunk = runs_per_chunk * inner;
                        let partial = |k: usize, wc: &[f32], gc: &[f32]| {
                            let mut local = vec![0f64; p.chains];
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
                        let mut total = parts.into_iter().fold(vec![0f64; p.chains], |mut a, b| {
                            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                            a
                        });
                        // The constant scalars do not count.
                        for &i in &t.fixed {
                            total[t.chain[(i / inner) % len] as usize] -= w[i] as f64 * g[i] as f64;
                        }
                        total
                    })
                })??;
                sigma.iter_mut().zip(part).for_each(|(x, y)| *x += y);
            }
            let mut r = vec![0f32; p.chains];
            for c in 0..p.chains {
                let dv = ((v[c] as f64 * gv[c] as f64 - sigma[c]) / v[c] as f64) as f32;
                let m = &mut self.mv[bi][c];
                *m = mu * *m + dv;
                let raw = 1.0 - lr * *m / v[c];
                r[c] = if raw >= cfg.r_floor as f32 {
                    raw
                } else {
                    guarded += 1;
                    cfg.r_floor as f32
                };
            }
            // Momentum, decay and weight allocation: one pass per tensor, in place.
            for t in ts {
                let g = grads[&t.name].contiguous()?;
                let n = g.elem_count();
                if !self.momentum.contains_key(&t.name) {
                    self.momentum.insert(t.name.clone(), vec![0.0; n]);
                }
                let m = self.momentum.get_mut(&t.name).expect("inserted above");
                with_slice(&g, |gs| {
                    let op = Fused {
                        t,
                        g: gs,
                        gamma: None,
                        m: std::sync::Mutex::new(m),
                        v: &v,
                        r: &r,
                        lr,
                        mu,
                        wd,
                    };
                    params[&t.name].as_tensor().inplace_op1(&op)
                })??;
            }
        }
        if guarded > 0 {
            self.guarded_steps += 1;
        }
        Ok(guarded)
    }
}
