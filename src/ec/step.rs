//! One EC-SGD step (spec §5), as a reference implementation over f64 arrays: inverse chain
//! rule (ICR), path-space momentum and weight decay, weight allocation (WA) and the guard on
//! R. The update programs ([`super::program`]) run the same step on the executor's tensors
//! and are tested against this.
//!
//! It reads only the [`Basis`]: every moving scalar w of a block has the coordinate
//! p = w·P_chain (chained) or p = w (unchained), P_c the product of the V's of chain c
//! (one V in chain and star blocks); a V has the coordinate q_k = V_k·P of its own chain
//! (q_k = V_k when unchained); the designated scalars are constants. Then (spec §5; the
//! general form is derived in docs/ec-dag.md §5):
//! - ICR: dL/dp = g / P_chain (or g); σ_c = Σ w·g over the chained scalars of c;
//!   dL/dq_k = T_k / q_k with T_k = V_k·g(V_k) − Σ_{c ∋ k} σ_c − Σ_{d: chain(d) ∋ k} T_d,
//!   which is (V·g(V) − σ)/V with one V per chain;
//! - WA: R_k = guard(1 − η·m_k / q_k) / Π_{j ∈ chain(k)} R_j; chained:
//!   w ← (w − η·m / P_c) / Π_{k ∈ c} R_k; unchained: w ← w − η·m; V_k ← V_k·R_k.

use super::basis::{Basis, Block, TensorRole};
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

/// Momentum state: per parameter scalar, and per V.
#[derive(Debug, Clone, Default)]
pub struct EcState {
    pub m: Tensors,
    pub mv: Vec<Vec<f64>>,
    /// Steps where the guard replaced some R.
    pub guarded: usize,
}

/// The gradients in path coordinates: dL/dp per scalar (0 for designated and V scalars),
/// and dL/dq for the coordinate q_k = V_k·P of every V (dL/dV_k in chain and star blocks).
#[derive(Debug, Clone)]
pub struct Icr {
    pub dp: Tensors,
    pub dv: Vec<Vec<f64>>,
}

/// A tensor's role with its constant scalars as a set.
struct Role<'a> {
    t: &'a TensorRole,
    fixed: HashSet<usize>,
}

impl Role<'_> {
    /// The chain of scalar i, or None; `Err` for constant scalars.
    fn coordinate(&self, i: usize) -> Result<Option<usize>, ()> {
        if self.fixed.contains(&i) {
            Err(())
        } else {
            Ok(self.t.chain_of(i))
        }
    }
}

pub struct EcStep {
    basis: Basis,
}

fn roles(b: &Block) -> Vec<Role<'_>> {
    b.tensors()
        .map(|t| Role {
            t,
            fixed: t.fixed.iter().copied().collect(),
        })
        .collect()
}

impl EcStep {
    pub fn new(basis: &Basis) -> Self {
        EcStep {
            basis: basis.clone(),
        }
    }

    fn each(&self) -> impl Iterator<Item = (&Block, Vec<Role<'_>>)> {
        self.basis.blocks.iter().map(|b| (b, roles(b)))
    }

    fn vs(b: &Block, w: &Tensors) -> Vec<f64> {
        b.v.iter().map(|s| w[&s.param][s.index]).collect()
    }

    /// The coordinate of V_k: V_k·P of its own chain (V_k when unchained).
    fn qs(b: &Block, v: &[f64], p: &[f64]) -> Vec<f64> {
        (0..v.len())
            .map(|k| v[k] * b.v_chain(k).map_or(1.0, |c| p[c]))
            .collect()
    }

    /// The number of path coordinates of every block: the scalars that are not held
    /// constant, plus the V's. It is the blocks' share of class_dim (their basis paths).
    pub fn coordinate_count(&self) -> Vec<usize> {
        self.each()
            .map(|(b, rs)| {
                let fixed: usize = rs.iter().map(|r| r.fixed.len()).sum();
                b.params() - fixed + b.v.len()
            })
            .collect()
    }

    /// The blocks' parameters (weights and biases), by name.
    pub fn params(&self) -> Vec<String> {
        self.basis
            .blocks
            .iter()
            .flat_map(|b| b.tensors().map(|t| t.param.clone()))
            .collect()
    }

    /// Path coordinates of weights `w`: p per scalar (0 where not a coordinate) and the
    /// coordinate of every V (V·P of its chain).
    pub fn coordinates(&self, w: &Tensors) -> (Tensors, Vec<Vec<f64>>) {
        let mut p = Tensors::new();
        let mut qq = vec![];
        for (b, rs) in self.each() {
            let v = Self::vs(b, w);
            let pc = b.chain_values(&v, 1.0);
            for r in &rs {
                let ws = &w[&r.t.param];
                let out = (0..ws.len())
                    .map(|i| match r.coordinate(i) {
                        Err(()) => 0.0,
                        Ok(c) => ws[i] * c.map_or(1.0, |c| pc[c]),
                    })
                    .collect();
                p.insert(r.t.param.clone(), out);
            }
            qq.push(Self::qs(b, &v, &pc));
        }
        (p, qq)
    }

    /// The inverse of [`EcStep::coordinates`]: weights with path coordinates `p` and V
    /// coordinates `q`; designated scalars (and parameters outside the blocks) as in `base`.
    pub fn weights_from(&self, base: &Tensors, p: &Tensors, q: &[Vec<f64>]) -> Tensors {
        let mut w = base.clone();
        for ((b, rs), qb) in self.each().zip(q) {
            // V's in order: each one's chain runs through earlier V's only.
            let mut v = vec![0f64; b.v.len()];
            for k in 0..v.len() {
                let pk = b.v_chain(k).map_or(1.0, |c| {
                    b.monomials[c].iter().map(|&j| v[j as usize]).product()
                });
                v[k] = qb[k] / pk;
            }
            let pc = b.chain_values(&v, 1.0);
            for r in &rs {
                let ws = w.get_mut(&r.t.param).expect("block parameter");
                for (i, x) in ws.iter_mut().enumerate() {
                    if let Ok(c) = r.coordinate(i) {
                        *x = p[&r.t.param][i] / c.map_or(1.0, |c| pc[c]);
                    }
                }
            }
            for (k, s) in b.v.iter().enumerate() {
                w.get_mut(&s.param).expect("V tensor")[s.index] = v[k];
            }
        }
        w
    }

    /// Spec §5 step 1, the inverse chain rule, from the ordinary gradients `g`; with chains
    /// through several V's (docs/ec-dag.md §5): σ_k sums σ_c over the chains through V_k,
    /// and T_k = V_k·g(V_k) − σ_k − Σ T_d over the V's d whose own chain runs through V_k
    /// (later ones, done first); dL/dq_k = T_k / q_k.
    pub fn icr(&self, w: &Tensors, g: &Tensors) -> Icr {
        let mut dp = Tensors::new();
        let mut dv = vec![];
        for (b, rs) in self.each() {
            let v = Self::vs(b, w);
            let pc = b.chain_values(&v, 1.0);
            let mut sigma = vec![0f64; b.chains()];
            for r in &rs {
                let (ws, gs) = (&w[&r.t.param], &g[&r.t.param]);
                let d = (0..ws.len())
                    .map(|i| match r.coordinate(i) {
                        Err(()) => 0.0,
                        Ok(None) => gs[i],
                        Ok(Some(c)) => {
                            sigma[c] += ws[i] * gs[i];
                            gs[i] / pc[c]
                        }
                    })
                    .collect();
                dp.insert(r.t.param.clone(), d);
            }
            let q = Self::qs(b, &v, &pc);
            let links = b.v_links();
            let mut t = vec![0f64; v.len()];
            for k in (0..v.len()).rev() {
                let s = &b.v[k];
                let mut tk = v[k] * g[&s.param][s.index];
                for &c in &links.through[k] {
                    tk -= sigma[c];
                }
                for &d in &links.dependents[k] {
                    tk -= t[d];
                }
                t[k] = tk;
            }
            dv.push((0..v.len()).map(|k| t[k] / q[k]).collect());
        }
        Icr { dp, dv }
    }

    /// One EC-SGD step (spec §5, steps 1 to 4) on the block parameters of `w`, in place.
    /// Returns the number of V's whose R the guard replaced.
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
        if state.mv.len() != self.basis.blocks.len() {
            state.mv = self
                .basis
                .blocks
                .iter()
                .map(|b| vec![0.0; b.v.len()])
                .collect();
        }
        for (bi, (b, rs)) in self.each().enumerate() {
            let v = Self::vs(b, w);
            let pc = b.chain_values(&v, 1.0);
            let q = Self::qs(b, &v, &pc);
            // Step 2 and 3 for the V coordinates, then R_k = V'_k / V_k with its guard (on
            // q'/q), in order, so that a V's chain has its R's when it is needed.
            let mut r = vec![0f64; v.len()];
            for k in 0..v.len() {
                let m = &mut state.mv[bi][k];
                *m = cfg.momentum * *m + icr.dv[bi][k];
                let raw = 1.0 - cfg.lr * *m / q[k];
                let rho = if raw >= cfg.r_floor {
                    raw
                } else {
                    guarded += 1;
                    cfg.r_floor
                };
                let rp: f64 = b.v_chain(k).map_or(1.0, |c| {
                    b.monomials[c].iter().map(|&j| r[j as usize]).product()
                });
                r[k] = rho / rp;
            }
            let rc = b.chain_values(&r, 1.0);
            for role in &rs {
                let name = &role.t.param;
                let n = w[name].len();
                let m = state.m.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
                let (pp, dp) = (&p[name], &icr.dp[name]);
                let ws = w.get_mut(name).expect("block parameter");
                for i in 0..n {
                    let Ok(chain) = role.coordinate(i) else {
                        continue;
                    };
                    m[i] = cfg.momentum * m[i] + dp[i] + cfg.weight_decay * pp[i];
                    ws[i] = match chain {
                        Some(c) => (ws[i] - cfg.lr * m[i] / pc[c]) / rc[c],
                        None => ws[i] - cfg.lr * m[i],
                    };
                }
            }
            for (k, s) in b.v.iter().enumerate() {
                w.get_mut(&s.param).expect("V tensor")[s.index] *= r[k];
            }
        }
        if guarded > 0 {
            state.guarded += 1;
        }
        guarded
    }
}
