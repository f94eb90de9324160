//! One EC-SGD step (spec §5), as a reference implementation over f64 arrays: inverse chain
//! rule (ICR), path-space momentum and weight decay, weight allocation (WA) and the guard on
//! R. The update programs ([`super::program`]) run the same step on the executor's tensors
//! and are tested against this.
//!
//! It reads only the [`Basis`]: every moving scalar w of a block has the coordinate
//! p = w·V_chain (chained) or p = w (unchained); V_c is a scalar of a free tensor; the
//! designated scalars are constants. Then (spec §5, any block shape):
//! - ICR: dL/dp = g / V_chain (or g); σ_c = Σ w·g over the chained scalars of c;
//!   dL/dV_c = (V_c·g(V_c) − σ_c) / V_c;
//! - WA: R_c = 1 − η·m_V / V_c (guarded); chained: w ← (w − η·m / V_c) / R_c;
//!   unchained: w ← w − η·m; V_c ← V_c·R_c.

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

/// Momentum state: per parameter scalar, and per chain.
#[derive(Debug, Clone, Default)]
pub struct EcState {
    pub m: Tensors,
    pub mv: Vec<Vec<f64>>,
    /// Steps where the guard replaced some R.
    pub guarded: usize,
}

/// The gradients in path coordinates: dL/dp per scalar (0 for designated and V scalars),
/// and dL/dV per chain.
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

    /// The number of path coordinates of every block: moving scalars plus chains. It is
    /// the blocks' share of class_dim (their basis paths).
    pub fn coordinate_count(&self) -> Vec<usize> {
        self.each()
            .map(|(b, rs)| {
                let fixed: usize = rs.iter().map(|r| r.fixed.len()).sum();
                b.params() - fixed + b.chains()
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

    /// Path coordinates of weights `w`: p per scalar (0 where not a coordinate), V per chain.
    pub fn coordinates(&self, w: &Tensors) -> (Tensors, Vec<Vec<f64>>) {
        let mut p = Tensors::new();
        let mut vv = vec![];
        for (b, rs) in self.each() {
            let v = Self::vs(b, w);
            for r in &rs {
                let ws = &w[&r.t.param];
                let out = (0..ws.len())
                    .map(|i| match r.coordinate(i) {
                        Err(()) => 0.0,
                        Ok(c) => ws[i] * c.map_or(1.0, |c| v[c]),
                    })
                    .collect();
                p.insert(r.t.param.clone(), out);
            }
            vv.push(v);
        }
        (p, vv)
    }

    /// The inverse of [`EcStep::coordinates`]: weights with path coordinates `p` and chain
    /// values `v`; designated scalars (and parameters outside the blocks) as in `base`.
    pub fn weights_from(&self, base: &Tensors, p: &Tensors, v: &[Vec<f64>]) -> Tensors {
        let mut w = base.clone();
        for ((b, rs), vb) in self.each().zip(v) {
            for r in &rs {
                let ws = w.get_mut(&r.t.param).expect("block parameter");
                for (i, x) in ws.iter_mut().enumerate() {
                    if let Ok(c) = r.coordinate(i) {
                        *x = p[&r.t.param][i] / c.map_or(1.0, |c| vb[c]);
                    }
                }
            }
            for (c, s) in b.v.iter().enumerate() {
                w.get_mut(&s.param).expect("V tensor")[s.index] = vb[c];
            }
        }
        w
    }

    /// Spec §5 step 1, the inverse chain rule, from the ordinary gradients `g`.
    pub fn icr(&self, w: &Tensors, g: &Tensors) -> Icr {
        let mut dp = Tensors::new();
        let mut dv = vec![];
        for (b, rs) in self.each() {
            let v = Self::vs(b, w);
            let mut sigma = vec![0f64; v.len()];
            for r in &rs {
                let (ws, gs) = (&w[&r.t.param], &g[&r.t.param]);
                let d = (0..ws.len())
                    .map(|i| match r.coordinate(i) {
                        Err(()) => 0.0,
                        Ok(None) => gs[i],
                        Ok(Some(c)) => {
                            sigma[c] += ws[i] * gs[i];
                            gs[i] / v[c]
                        }
                    })
                    .collect();
                dp.insert(r.t.param.clone(), d);
            }
            dv.push(
                b.v.iter()
                    .enumerate()
                    .map(|(c, s)| (v[c] * g[&s.param][s.index] - sigma[c]) / v[c])
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
        if state.mv.len() != self.basis.blocks.len() {
            state.mv = self
                .basis
                .blocks
                .iter()
                .map(|b| vec![0.0; b.chains()])
                .collect();
        }
        for (bi, (b, rs)) in self.each().enumerate() {
            let v = Self::vs(b, w);
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
                        Some(c) => (ws[i] - cfg.lr * m[i] / v[c]) / r[c],
                        None => ws[i] - cfg.lr * m[i],
                    };
                }
            }
            for (c, s) in b.v.iter().enumerate() {
                w.get_mut(&s.param).expect("V tensor")[s.index] *= r[c];
            }
        }
        if guarded > 0 {
            state.guarded += 1;
        }
        guarded
    }
}
