//! The balanced representative of a class (issue 15, docs/balanced-sgd.md): the model of the
//! class with the least fan-in-weighted squared norm N(w) = Σ_T |w_T|² / fan_in(T), found
//! by rescaling, and the iteration that moves a model towards it. Balanced SGD
//! (`train::optim::BalancedSgd`) takes its SGD steps there.
//!
//! Rescaling group k by c_k = e^(s_k) multiplies the slices its units read (their rows,
//! biases: the in-slices) by c_k and divides the slices that read them (the out-slices) by
//! c_k (spec §1). With I_k and O_k the weighted squared norms (Σ α_T w², α_T = 1/fan_in(T))
//! of group k's in- and out-slices of trainable parameters, N of the rescaled model is a sum
//! of terms α w² e^(2 (s_a − s_b)), convex in s; its gradient along s_k is 2 (I_k − O_k), so the
//! balanced model is the one with I_k = O_k for every group, and it is unique when each
//! group has I_k, O_k > 0 (then the minimum over the orbit is strict). The coordinate
//! minimizer for s_k alone is ¼ ln(O_k / I_k); one iteration here moves every group by
//! half of that at once (a damped Jacobi step: the undamped one oscillates between adjacent
//! layers, which share slices), s_k ← s_k + ⅛ ln(O_k / I_k).
//!
//! The plan records, for every parameter the groups touch, which group each position along
//! its axis 0 and axis 1 belongs to (along axis 1 per row in a grouped conv, whose input
//! channels belong to other units in each group of rows); then an iteration is one pass per
//! tensor that multiplies every scalar by the factor of its row times that of its column and
//! sums the squares of the result along both axes for the next iteration
//! (`exec::kernels::update::balanced_pass`, fused with the SGD step in training). The f64
//! reference here runs the same iteration in plain loops.

use crate::analysis::Analysis;
use crate::error::{Error, Result};
use crate::exec::kernels::update::balanced_pass;
use crate::ir::{Graph, TensorData};
use std::collections::HashMap;

/// No group at this position.
const NONE: u32 = u32::MAX;

/// Which group owns each position along one axis of a tensor (along axis 1 of a grouped
/// conv: each position of each row, d0 x d1), and the exponent of its factor there (+1
/// in-slices, −1 out-slices).
#[derive(Debug, Clone)]
struct Role {
    group: Vec<u32>,
    exponent: i32,
}

/// One parameter viewed as (d0, d1, inner), with its roles along axes 0 and 1.
#[derive(Debug, Clone)]
struct Part {
    param: String,
    d0: usize,
    d1: usize,
    inner: usize,
    roles: [Option<Role>; 2],
    /// Whether the rows' column maps differ (a grouped conv): then every row has its own
    /// line of column factors.
    per_row: bool,
    /// α: the weight of its squares in the norm, 1 / fan-in; 0 for a tensor that does not
    /// count (not trainable: BN running statistics are rescaled but not counted).
    weight: f64,
}

/// The balancing plan of a model: built once from its analysis, run on its tensors.
#[derive(Debug, Clone)]
pub struct Balance {
    parts: Vec<Part>,
    groups: usize,
}

/// The factors of one parameter for an iteration, laid out for
/// [`balanced_pass`]: one per row (axis 0), and one per scalar of a row
/// (d1 x inner; d0 x d1 x inner in a grouped conv; none when no group owns a column).
pub struct Factors {
    pub rows: Vec<f32>,
    pub cols: Vec<f32>,
    /// Which sums of squares the norms need: per row, per column (a counted tensor with
    /// a role along that axis).
    pub count: (bool, bool),
}

impl Part {
    /// Whether its squares count in the norm (it is trainable).
    fn counted(&self) -> bool {
        self.weight > 0.0
    }

    /// The (group, exponent) of the row and of the column of scalar (r, c, ·).
    fn at(&self, r: usize, c: usize) -> [Option<(usize, i32)>; 2] {
        let get = |a: usize, i: usize| {
            let role = self.roles[a].as_ref()?;
            (role.group[i] != NONE).then_some((role.group[i] as usize, role.exponent))
        };
        [get(0, r), get(1, r * self.d1 + c)]
    }
}

impl Balance {
    /// The plan of `g` for the rescaling groups of `a` (its analysis, in the BatchNorm mode
    /// the model trains in). Radial directions (spec §11.1) are left out: the norm has no
    /// minimum along them.
    pub fn new(g: &Graph, a: &Analysis) -> Result<Balance> {
        let trainable = g.trainable_params();
        let mut parts: Vec<Part> = vec![];
        let mut index: HashMap<String, usize> = HashMap::new();
        for (k, members) in a.groups.iter().enumerate() {
            for e in members.iter().flat_map(|&u| a.edits(u)) {
                let Some(p) = g.params.get(&e.param) else {
                    continue;
                };
                let dims = &p.dims;
                if e.axis > 1 || dims.is_empty() || (e.rows.is_some() && e.axis != 1) {
                    return Err(Error::unsupported(format!(
                        "balanced SGD: a rescaling of '{}' along axis {} (ecc balances \
                         per-channel slices along axis 0 or 1)",
                        e.param, e.axis
                    )));
                }
                let i = *index.entry(e.param.clone()).or_insert_with(|| {
                    parts.push(Part {
                        param: e.param.clone(),
                        d0: dims[0],
                        d1: dims.get(1).copied().unwrap_or(1),
                        inner: dims.iter().skip(2).product(),
                        roles: [None, None],
                        per_row: false,
                        weight: 1.0,
                    });
                    parts.len() - 1
                });
                let part = &mut parts[i];
                let (d0, d1) = (part.d0, part.d1);
                let len = if e.axis == 0 { d0 } else { d1 };
                // Along axis 1 every row has its own map (a grouped conv's rows differ).
                let size = if e.axis == 0 { d0 } else { d0 * d1 };
                let role = part.roles[e.axis].get_or_insert_with(|| Role {
                    group: vec![NONE; size],
                    exponent: e.exponent,
                });
                if role.exponent != e.exponent {
                    return Err(Error::unsupported(format!(
                        "balanced SGD: '{}' is both multiplied and divided along axis {}",
                        e.param, e.axis
                    )));
                }
                let per = (e.channels * e.block).max(1);
                let rows = match (e.axis, e.rows) {
                    (0, _) => 0..1,
                    (_, Some((lo, hi))) => lo..hi,
                    (_, None) => 0..d0,
                };
                for r in rows {
                    for o in 0..len / per {
                        for b in 0..e.block {
                            let pos = o * per + e.channel * e.block + b;
                            let at = if e.axis == 0 { pos } else { r * d1 + pos };
                            if role.group[at] != NONE && role.group[at] != k as u32 {
                                return Err(Error::unsupported(format!(
                                    "balanced SGD: two rescalings share a slice of '{}'",
                                    e.param
                                )));
                            }
                            role.group[at] = k as u32;
                        }
                    }
                }
            }
        }
        for p in parts.iter_mut() {
            p.per_row = p.roles[1]
                .as_ref()
                .is_some_and(|r| (0..p.d0).any(|x| r.group[x * p.d1..][..p.d1] != r.group[..p.d1]));
        }
        weigh(&mut parts, g, &trainable);
        Ok(Balance {
            parts,
            groups: a.groups.len(),
        })
    }

    /// The parameters the plan rescales, by index (the `i` of [`Balance::factors`] and
    /// [`Balance::add_squares`]).
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| p.param.as_str())
    }

    /// Whether parameter `i` of the plan is trainable (its squares count in the norm).
    pub fn trains(&self, i: usize) -> bool {
        self.parts[i].counted()
    }

    /// Fresh accumulators for the groups' squared in- and out-norms (I, O).
    pub fn zeros(&self) -> (Vec<f64>, Vec<f64>) {
        (vec![0f64; self.groups], vec![0f64; self.groups])
    }

    /// The factors of parameter `i` of the plan for the groups' factors `c` = e^s (all 1
    /// without `c`).
    pub fn factors(&self, i: usize, c: Option<&[f64]>) -> Factors {
        let p = &self.parts[i];
        let f = |role: &Option<Role>, at: usize| match (role, c) {
            (Some(r), Some(c)) if r.group[at] != NONE => {
                let k = c[r.group[at] as usize];
                (if r.exponent > 0 { k } else { 1.0 / k }) as f32
            }
            _ => 1.0,
        };
        let rows = (0..p.d0).map(|r| f(&p.roles[0], r)).collect();
        // One line of column factors serves every row unless the rows' maps differ; no
        // column role, no column factors (the pass multiplies by the row's alone).
        let lines = match (&p.roles[1], p.per_row) {
            (None, _) => 0,
            (_, true) => p.d0,
            _ => 1,
        };
        let mut cols = Vec::with_capacity(lines * p.d1 * p.inner);
        for r in 0..lines {
            for c in 0..p.d1 {
                let v = f(&p.roles[1], r * p.d1 + c);
                cols.extend(std::iter::repeat_n(v, p.inner));
            }
        }
        let count = (
            p.counted() && p.roles[0].is_some(),
            p.counted() && p.roles[1].is_some(),
        );
        Factors { rows, cols, count }
    }

    /// Add the squares [`balanced_pass`] returned for parameter `i` of the plan (per row,
    /// and per scalar of a row or of the tensor, as its factors were laid out) to the norms.
    pub fn add_squares(
        &self,
        i: usize,
        rows: &[f64],
        cols: &[f64],
        norms: (&mut [f64], &mut [f64]),
    ) {
        let p = &self.parts[i];
        if !p.counted() {
            return;
        }
        let (inn, out) = norms;
        let alpha = p.weight;
        let mut add = |role: &Role, at: usize, q: f64| {
            let q = alpha * q;
            let k = role.group[at];
            if k != NONE {
                let to = if role.exponent > 0 {
                    &mut *inn
                } else {
                    &mut *out
                };
                to[k as usize] += q;
            }
        };
        if let Some(role) = &p.roles[0] {
            for (r, &q) in rows.iter().enumerate() {
                add(role, r, q);
            }
        }
        if let Some(role) = &p.roles[1] {
            // cols holds d1 x inner sums, or d0 x d1 x inner in a grouped conv.
            for (j, cell) in cols.chunks(p.inner.max(1)).enumerate() {
                let at = if cols.len() > p.d1 * p.inner {
                    j
                } else {
                    j % p.d1
                };
                add(role, at, cell.iter().sum());
            }
        }
    }

    /// The factors of one damped iteration from the norms, c_k = e^(s_k) with
    /// s_k = ⅛ ln(O_k / I_k), computed as the eighth root (three square roots: no logarithm
    /// or exponential per group in a step); 1 where a norm is zero or a ratio not finite.
    /// And the imbalance max_k ¼ |ln(O_k / I_k)| (the largest coordinate step left).
    pub fn step_of(inn: &[f64], out: &[f64]) -> (Vec<f64>, f64) {
        let mut spread = 1f64;
        let c = inn
            .iter()
            .zip(out)
            .map(|(&i, &o)| {
                let r = o / i;
                if i > 0.0 && o > 0.0 && r.is_finite() {
                    spread = spread.max(r).max(1.0 / r);
                    r.sqrt().sqrt().sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        (c, 0.25 * spread.ln())
    }

    /// One pass over the f32 parameters of `g`: rescale by the groups' factors `c` (if
    /// given) and return the norms (I, O) of the result.
    pub fn pass(&self, g: &mut Graph, c: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
        let (mut inn, mut out) = self.zeros();
        for (i, p) in self.parts.iter().enumerate() {
            let Some(TensorData::F32(w)) = g.params.get_mut(&p.param).map(|c| &mut c.data) else {
                continue;
            };
            let f = self.factors(i, c);
            let (rows, cols) = balanced_pass(w, None, &f.rows, &f.cols, f.count);
            self.add_squares(i, &rows, &cols, (&mut inn, &mut out));
        }
        (inn, out)
    }

    /// Balance `g` in place: damped iterations until the imbalance is at most `tol` or
    /// `max` iterations are done; returns (iterations, imbalance left).
    pub fn balance(&self, g: &mut Graph, tol: f64, max: usize) -> (usize, f64) {
        iterate(tol, max, |s| self.pass(g, s))
    }

    /// The reference (f64, plain loops): one pass over `w` by name, rescaling by the
    /// groups' factors `c` (if given); returns the norms of the result.
    pub fn pass_f64(
        &self,
        w: &mut HashMap<String, Vec<f64>>,
        c: Option<&[f64]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut inn, mut out) = self.zeros();
        for p in &self.parts {
            let Some(v) = w.get_mut(&p.param) else {
                continue;
            };
            for r in 0..p.d0 {
                for col in 0..p.d1 {
                    let roles = p.at(r, col);
                    let f: f64 = roles
                        .iter()
                        .flatten()
                        .map(|&(k, e)| c.map_or(1.0, |c| c[k].powi(e)))
                        .product();
                    let cell = &mut v[(r * p.d1 + col) * p.inner..][..p.inner];
                    cell.iter_mut().for_each(|x| *x *= f);
                    let q: f64 = p.weight * cell.iter().map(|x| x * x).sum::<f64>();
                    for &(k, e) in roles.iter().flatten().filter(|_| p.counted()) {
                        let to = if e > 0 { &mut inn } else { &mut out };
                        to[k] += q;
                    }
                }
            }
        }
        (inn, out)
    }

    /// One balanced-SGD step in f64 (the reference `tests/balanced_sgd.rs` checks the
    /// training step against; docs/balanced-sgd.md): with the norms (I, O) the last step
    /// left, s = ⅛ ln(O/I); then on every tensor m ← μm + g + λw, w ← w − ηm; then w and m
    /// times the factors e^(±s) of their slices. Returns the norms of the new w, the next
    /// step's. Tensors without a gradient do not move (but are rescaled).
    pub fn reference_step(
        &self,
        w: &mut HashMap<String, Vec<f64>>,
        m: &mut HashMap<String, Vec<f64>>,
        g: &HashMap<String, Vec<f64>>,
        norms: &(Vec<f64>, Vec<f64>),
        (lr, mu, wd): (f64, f64, f64),
    ) -> (Vec<f64>, Vec<f64>) {
        let (c, _) = Self::step_of(&norms.0, &norms.1);
        for (k, wk) in w.iter_mut() {
            let Some(gk) = g.get(k) else { continue };
            let mk = m.entry(k.clone()).or_insert_with(|| vec![0.0; wk.len()]);
            for ((x, v), d) in wk.iter_mut().zip(mk.iter_mut()).zip(gk) {
                *v = mu * *v + d + wd * *x;
                *x -= lr * *v;
            }
        }
        self.pass_f64(m, Some(&c));
        self.pass_f64(w, Some(&c))
    }

    /// N(w) = Σ α_T |w_T|² over the tensors the plan rescales: what balancing minimizes.
    pub fn norm_f64(&self, w: &HashMap<String, Vec<f64>>) -> f64 {
        self.parts
            .iter()
            .filter_map(|p| Some(p.weight * w.get(&p.param)?.iter().map(|x| x * x).sum::<f64>()))
            .sum()
    }

    /// The reference balancing of f64 tensors by name.
    pub fn balance_f64(
        &self,
        w: &mut HashMap<String, Vec<f64>>,
        tol: f64,
        max: usize,
    ) -> (usize, f64) {
        iterate(tol, max, |s| self.pass_f64(w, s))
    }

    /// The readable program of one step (what `ecc convert` prints for EC-SGD's blocks).
    pub fn text(&self) -> String {
        let mut s = format!(
            "program balanced-sgd: {} rescalings over {} tensors\n",
            self.groups,
            self.parts.len()
        );
        s += "  (I, O) := the groups' weighted squared in-/out-norms the last step left\n";
        s += "  c := (O / I)^(1/8), i.e. e^s with s = ⅛ ln(O / I)   (1 where I or O is 0)\n";
        s += "  each tensor below, one pass: m := μm + g + λw;  w := (w − η m)·c_row·c_col;\n";
        s +=
            "    m := m·c_row·c_col;  (I, O) += αw² by row and column   (c_row, c_col: c or 1/c)\n";
        s += "  every other tensor: SGD\n";
        for p in &self.parts {
            let role = |r: &Option<Role>| match r {
                Some(r) if r.exponent > 0 => "·c",
                Some(_) => "/c",
                None => "  ",
            };
            s += &format!(
                "  {:<24} {}x{}x{}  rows {}  cols {}{}\n",
                p.param,
                p.d0,
                p.d1,
                p.inner,
                role(&p.roles[0]),
                role(&p.roles[1]),
                if p.counted() { "" } else { "  (not counted)" }
            );
        }
        s
    }
}

/// Set every part's weight α = 1 / fan-in (0 when it is not `trainable`): a weight's fan-in
/// is its number of scalars per output channel (along the axis its in-role is on, or the one
/// its out-role is not on), a bias's that of the weight of its node.
fn weigh(parts: &mut [Part], g: &Graph, trainable: &std::collections::HashSet<String>) {
    let fan_in: HashMap<String, f64> = g
        .nodes
        .iter()
        .filter_map(|n| {
            let w = g.params.get(n.inputs.get(1)?)?;
            let b = g.params.get(n.inputs.get(2)?)?;
            Some((n.inputs[2].clone(), w.len() as f64 / b.len().max(1) as f64))
        })
        .collect();
    for p in parts.iter_mut() {
        let n = (p.d0 * p.d1 * p.inner) as f64;
        let out_axis = match (&p.roles[0], &p.roles[1]) {
            (Some(r), _) if r.exponent > 0 => 0,
            (_, Some(r)) if r.exponent > 0 => 1,
            (Some(_), _) => 1,
            _ => 0,
        };
        let fi = if p.d1 == 1 && p.inner == 1 {
            fan_in.get(&p.param).copied().unwrap_or(1.0)
        } else {
            n / (if out_axis == 0 { p.d0 } else { p.d1 }) as f64
        };
        p.weight = if trainable.contains(&p.param) {
            1.0 / fi
        } else {
            0.0
        };
    }
}

/// Damped iterations of `pass` (which rescales by the factors given and returns the norms
/// after) until the imbalance is at most `tol` or `max` iterations are done.
fn iterate(
    tol: f64,
    max: usize,
    mut pass: impl FnMut(Option<&[f64]>) -> (Vec<f64>, Vec<f64>),
) -> (usize, f64) {
    let mut c: Option<Vec<f64>> = None;
    for it in 0..=max {
        let (inn, out) = pass(c.as_deref());
        let (next, worst) = Balance::step_of(&inn, &out);
        if worst <= tol || it == max {
            return (it, worst);
        }
        c = Some(next);
    }
    unreachable!("the loop returns at it == max")
}
