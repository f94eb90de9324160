//! One EC-SGD step on a block (spec §5), as a reference implementation over f64 arrays:
//! inverse chain rule (ICR), path-space momentum and weight decay, weight allocation (WA)
//! and the guard on R. The generated update programs that run this with whole-tensor candle
//! operations are still to come; this is the definition they will be checked against.
//!
//! Coordinates of a block (after gauge normalization, with free layer s):
//! - a weight w of a layer before s, on an edge into unit b: p = w·V_chain(b);
//! - a weight of a layer after s, on an edge out of unit a: p = w·V_chain(a);
//! - a weight of layer s: p = w; the free skeleton weights V_j of layer s;
//! - biases: before s like weights into b (p = b·V_chain(b)); at and after s, p = b.
//!
//! The designated weights (magnitude 1) are constants and never move.

use super::skeleton::{skeleton, Skeleton};
use super::EcPlan;
use crate::analysis::Analysis;
use crate::ir::Graph;
use std::collections::{HashMap, HashSet};

/// Weights or gradients by parameter name.
pub type Tensors = HashMap<String, Vec<f64>>;

#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// R below this (or not a number) is replaced by it: the guard.
    pub r_floor: f64,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            r_floor: 0.1,
        }
    }
}

/// Momentum state: per parameter scalar, and per chain.
#[derive(Debug, Clone, Default)]
pub struct EcState {
    pub m: Tensors,
    pub mv: Vec<Vec<f64>>,
    /// Steps where the guard replaced some R.
    pub guarded: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Region {
    Before,
    Free,
    After,
}

struct BlockStep {
    sk: Skeleton,
    free: usize,
    /// Fixed (designated) scalars per layer.
    fixed: Vec<HashSet<usize>>,
}

impl BlockStep {
    fn region(&self, l: usize) -> Region {
        match l.cmp(&self.free) {
            std::cmp::Ordering::Less => Region::Before,
            std::cmp::Ordering::Equal => Region::Free,
            std::cmp::Ordering::Greater => Region::After,
        }
    }
    fn free_weight(&self) -> &str {
        &self.sk.geo[self.free].weight
    }
    /// The chain of weight scalar `idx` of layer l (None in the free layer).
    fn chain(&self, l: usize, idx: usize) -> Option<usize> {
        let (o, i) = self.sk.geo[l].coords(idx);
        match self.region(l) {
            Region::Before => Some(self.sk.chains[l][o]),
            Region::Free => None,
            Region::After => Some(self.sk.chains[l - 1][i]),
        }
    }
    fn bias_chain(&self, l: usize, o: usize) -> Option<usize> {
        (self.region(l) == Region::Before).then(|| self.sk.chains[l][o])
    }
    fn vs(&self, w: &Tensors) -> Vec<f64> {
        let fw = &w[self.free_weight()];
        self.sk.v.iter().map(|&i| fw[i]).collect()
    }
}

/// The gradients in path coordinates: dL/dp per scalar (0 for designated and V scalars),
/// and dL/dV per chain.
#[derive(Debug, Clone)]
pub struct Icr {
    pub dp: Tensors,
    pub dv: Vec<Vec<f64>>,
}

pub struct EcStep {
    blocks: Vec<BlockStep>,
}

impl EcStep {
    pub fn new(g: &Graph, a: &Analysis, plan: &EcPlan) -> Self {
        let blocks = plan
            .blocks
            .iter()
            .map(|b| {
                let sk = skeleton(g, a, b);
                let mut fixed = vec![HashSet::new(); b.layers.len()];
                for (l, ds) in b.designated.iter().enumerate() {
                    for d in ds {
                        let layer = if d.incoming { l } else { l + 1 };
                        fixed[layer].insert(d.weight.index);
                    }
                }
                BlockStep {
                    sk,
                    free: b.free,
                    fixed,
                }
            })
            .collect();
        EcStep { blocks }
    }

    /// The number of path coordinates of every block: coordinate scalars plus chains. It is
    /// the blocks' share of class_dim (their basis paths).
    pub fn coordinate_count(&self) -> Vec<usize> {
        self.blocks
            .iter()
            .map(|b| {
                let fixed: usize = b.fixed.iter().map(HashSet::len).sum();
                let scalars: usize =
                    b.sk.geo
                        .iter()
                        .map(|g| g.dims.iter().product::<usize>())
                        .sum();
                let biases: usize =
                    b.sk.geo
                        .iter()
                        .filter(|g| g.bias.is_some())
                        .map(|g| g.outputs())
                        .sum();
                scalars + biases - fixed
            })
            .collect()
    }

    /// The block's parameters (weights and biases), by name.
    pub fn params(&self) -> Vec<String> {
        let mut v = vec![];
        for b in &self.blocks {
            for g in &b.sk.geo {
                v.push(g.weight.clone());
                v.extend(g.bias.clone());
            }
        }
        v
    }

    /// Path coordinates of weights `w`: p per scalar (0 where not a coordinate), V per chain.
    pub fn coordinates(&self, w: &Tensors) -> (Tensors, Vec<Vec<f64>>) {
        let mut p = Tensors::new();
        let mut vv = vec![];
        for b in &self.blocks {
            let v = b.vs(w);
            let vset: HashSet<usize> = b.sk.v.iter().copied().collect();
            for (l, geo) in b.sk.geo.iter().enumerate() {
                let ws = &w[&geo.weight];
                let out: Vec<f64> = (0..ws.len())
                    .map(|i| {
                        if b.fixed[l].contains(&i) || (l == b.free && vset.contains(&i)) {
                            0.0
                        } else {
                            ws[i] * b.chain(l, i).map_or(1.0, |c| v[c])
                        }
                    })
                    .collect();
                p.insert(geo.weight.clone(), out);
                if let Some(bn) = &geo.bias {
                    let bs = &w[bn];
                    p.insert(
                        bn.clone(),
                        (0..bs.len())
                            .map(|o| bs[o] * b.bias_chain(l, o).map_or(1.0, |c| v[c]))
                            .collect(),
                    );
                }
            }
            vv.push(v);
        }
        (p, vv)
    }

    /// The inverse of [`EcStep::coordinates`]: weights with path coordinates `p` and chain
    /// values `v`; designated weights (and parameters outside the blocks) as in `base`.
    pub fn weights_from(&self, base: &Tensors, p: &Tensors, v: &[Vec<f64>]) -> Tensors {
        let mut w = base.clone();
        for (b, vb) in self.blocks.iter().zip(v) {
            let vset: HashSet<usize> = b.sk.v.iter().copied().collect();
            for (l, geo) in b.sk.geo.iter().enumerate() {
                let ws = w.get_mut(&geo.weight).expect("block weight");
                for (i, x) in ws.iter_mut().enumerate() {
                    if b.fixed[l].contains(&i) {
                        continue;
                    }
                    if l == b.free && vset.contains(&i) {
                        *x = vb[b.sk.v.iter().position(|&y| y == i).expect("V")];
                        continue;
                    }
                    *x = p[&geo.weight][i] / b.chain(l, i).map_or(1.0, |c| vb[c]);
                }
                if let Some(bn) = &geo.bias {
                    let bs = w.get_mut(bn).expect("block bias");
                    for (o, x) in bs.iter_mut().enumerate() {
                        *x = p[bn][o] / b.bias_chain(l, o).map_or(1.0, |c| vb[c]);
                    }
                }
            }
        }
        w
    }

    /// Spec §5 step 1, the inverse chain rule, from the ordinary gradients `g`.
    pub fn icr(&self, w: &Tensors, g: &Tensors) -> Icr {
        let mut dp = Tensors::new();
        let mut dv = vec![];
        for b in &self.blocks {
            let v = b.vs(w);
            let vset: HashSet<usize> = b.sk.v.iter().copied().collect();
            let mut sigma = vec![0f64; v.len()];
            for (l, geo) in b.sk.geo.iter().enumerate() {
                let (ws, gs) = (&w[&geo.weight], &g[&geo.weight]);
                let mut d = vec![0f64; ws.len()];
                for i in 0..ws.len() {
                    if b.fixed[l].contains(&i) || (l == b.free && vset.contains(&i)) {
                        continue;
                    }
                    match b.chain(l, i) {
                        Some(c) => {
                            d[i] = gs[i] / v[c];
                            sigma[c] += ws[i] * gs[i];
                        }
                        None => d[i] = gs[i],
                    }
                }
                dp.insert(geo.weight.clone(), d);
                if let Some(bn) = &geo.bias {
                    let (bs, gb) = (&w[bn], &g[bn]);
                    let d = (0..bs.len())
                        .map(|o| match b.bias_chain(l, o) {
                            Some(c) => {
                                sigma[c] += bs[o] * gb[o];
                                gb[o] / v[c]
                            }
                            None => gb[o],
                        })
                        .collect();
                    dp.insert(bn.clone(), d);
                }
            }
            let gv = &g[b.free_weight()];
            dv.push(
                b.sk.v
                    .iter()
                    .enumerate()
                    .map(|(c, &i)| (v[c] * gv[i] - sigma[c]) / v[c])
                    .collect(),
            );
        }
        Icr { dp, dv }
    }

    /// One EC-SGD step (spec §5, steps 1 to 4) on the block parameters of `w`, in place.
    /// Returns the number of chains whose R the guard replaced.
    pub fn step(
        &self,
        w: &mut Tensors,
        g: &Tensors,
        state: &mut EcState,
        cfg: &StepConfig,
    ) -> usize {
        let icr = self.icr(w, g);
        let (p, _) = self.coordinates(w);
        let mut guarded = 0;
        if state.mv.len() != self.blocks.len() {
            state.mv = self
                .blocks
                .iter()
                .map(|b| vec![0.0; b.sk.v.len()])
                .collect();
        }
        for (bi, b) in self.blocks.iter().enumerate() {
            let v = b.vs(w);
            // Step 2 and 3 for V, then R with its guard.
            let mut r = vec![0f64; v.len()];
            for c in 0..v.len() {
                let m = &mut state.mv[bi][c];
                *m = cfg.momentum * *m + icr.dv[bi][c];
                let rc = 1.0 - cfg.lr * *m / v[c];
                r[c] = if rc >= cfg.r_floor {
                    rc
                } else {
                    guarded += 1;
                    cfg.r_floor
                };
            }
            let vset: HashSet<usize> = b.sk.v.iter().copied().collect();
            let mut names: Vec<(usize, String, bool)> = vec![];
            for (l, geo) in b.sk.geo.iter().enumerate() {
                names.push((l, geo.weight.clone(), false));
                if let Some(bn) = &geo.bias {
                    names.push((l, bn.clone(), true));
                }
            }
            for (l, name, is_bias) in names {
                let n = w[&name].len();
                let m = state.m.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
                let (pp, dp) = (&p[&name], &icr.dp[&name]);
                let ws = w.get_mut(&name).expect("block parameter");
                for i in 0..n {
                    if !is_bias && b.fixed[l].contains(&i) {
                        continue;
                    }
                    if !is_bias && l == b.free && vset.contains(&i) {
                        let c = b.sk.v.iter().position(|&x| x == i).expect("a V scalar");
                        ws[i] *= r[c];
                        continue;
                    }
                    m[i] = cfg.momentum * m[i] + dp[i] + cfg.weight_decay * pp[i];
                    let chain = if is_bias {
                        b.bias_chain(l, i)
                    } else {
                        b.chain(l, i)
                    };
                    ws[i] = match chain {
                        Some(c) => (ws[i] - cfg.lr * m[i] / v[c]) / r[c],
                        None => ws[i] - cfg.lr * m[i],
                    };
                }
            }
        }
        if guarded > 0 {
            state.guarded += 1;
        }
        guarded
    }
}
