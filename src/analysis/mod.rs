//! Symmetry analysis (spec §1, §2, §8): which hidden units of a model can be rescaled
//! without changing its function, which are tied together, which are blocked and by what,
//! and which channels are scale-invariant through batch normalization.
//!
//! The verdict for each op comes from equality saturation over the rules in `rules/`
//! ([`query`]); the walk over the graph that applies them is [`units`]. The result is an
//! [`Analysis`], printed by [`report`].

pub mod check;
pub mod lang;
pub mod query;
pub mod report;
pub mod rules;
pub mod units;

use crate::ir::{Graph, TensorData};
use std::collections::BTreeMap;

pub use query::Oracle;
pub use rules::RuleSet;
pub use units::{Block, BnMode, Edit, ScaleInvariant, Unit, Walk};

/// The result of analysing one model.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub mode: BnMode,
    /// The walk's unit records: read through the query methods below.
    walk: Walk,
    /// For each unit, its group (index into `groups`), or None when blocked or radial.
    pub group_of: Vec<Option<usize>>,
    /// Independent rescalings: the units of each (tied) group.
    pub groups: Vec<Vec<usize>>,
    /// Radial directions (training mode, spec §11.1): groups of units whose scale vanishes
    /// at a BatchNormalization and reaches no layer.
    pub radial: Vec<Vec<usize>>,
    /// Biases of radial units: redundant before a training-mode BatchNormalization (their
    /// gradient is zero, spec §11.1).
    pub redundant_biases: usize,
    /// m: trainable scalars (every parameter but BatchNormalization's running statistics).
    pub params: usize,
    pub rules: usize,
    pub queries: usize,
}

impl Analysis {
    /// H: the number of independent rescalings.
    pub fn rescalings(&self) -> usize {
        self.groups.len()
    }
    /// The dimension of the equivalence-class space: m - H, less the radial directions and
    /// the redundant biases in training mode (spec §11).
    pub fn class_dim(&self) -> usize {
        self.params - self.rescalings() - self.radial.len() - self.redundant_biases
    }

    /// The layer node that produces unit `u`, and its output channel there.
    pub fn producer(&self, u: usize) -> usize {
        self.walk.units[u].producer
    }
    pub fn channel(&self, u: usize) -> usize {
        self.walk.units[u].channel
    }
    /// Every parameter slice a rescaling of `u` multiplies or divides.
    pub fn edits(&self, u: usize) -> &[Edit] {
        &self.walk.units[u].edits
    }
    /// The layers that absorb `u`'s scale (its consumers).
    pub fn consumers(&self, u: usize) -> &[usize] {
        &self.walk.units[u].consumers
    }
    /// The nodes `u`'s scale passes through, producer first.
    pub fn passes(&self, u: usize) -> &[usize] {
        &self.walk.units[u].via
    }
    /// The concatenations `u` goes through, with the channel it lands on in each.
    pub fn placed(&self, u: usize) -> &[(usize, usize)] {
        &self.walk.units[u].placed
    }
    /// Why `u` cannot be rescaled, if it cannot.
    pub fn blocked(&self, u: usize) -> Option<&Block> {
        self.walk.units[u].blocked.as_ref()
    }
    /// The training-mode BatchNormalization where `u`'s scale vanishes, if any.
    pub fn ends_at(&self, u: usize) -> Option<usize> {
        self.walk.units[u].ends_at
    }
    /// Inference mode: layers followed directly by a BatchNormalization.
    pub fn scale_invariant(&self) -> &[ScaleInvariant] {
        &self.walk.scale_invariant
    }
    /// The number of units (output channels of layers) the walk followed.
    pub fn unit_count(&self) -> usize {
        self.walk.units.len()
    }
    /// The units of layer node `layer`, by output channel.
    pub fn units_of(&self, layer: usize) -> Vec<usize> {
        (0..self.walk.units.len())
            .filter(|&u| self.walk.units[u].producer == layer)
            .collect()
    }
    /// The edits of unit `u` that its rescaling multiplies: its in-edges (its row and bias,
    /// statistics and biases it passes through).
    pub fn in_edits(&self, u: usize) -> impl Iterator<Item = &Edit> {
        self.walk.units[u].edits.iter().filter(|e| e.exponent > 0)
    }
    /// The edits of unit `u` that its rescaling divides: its out-edges, one per consumer.
    pub fn out_edits(&self, u: usize) -> impl Iterator<Item = &Edit> {
        self.walk.units[u].edits.iter().filter(|e| e.exponent < 0)
    }
    /// The out-edge of unit `u` in parameter `param` (the slice of `param` that reads u).
    pub fn out_edit(&self, u: usize, param: &str) -> Option<&Edit> {
        self.out_edits(u).find(|e| e.param == param)
    }
    /// The units tied to `u` (itself included), or None when it is no rescaling.
    pub fn tied(&self, u: usize) -> Option<&[usize]> {
        self.group_of[u].map(|k| self.groups[k].as_slice())
    }
    /// Whether `u` belongs to a radial direction (spec §11.1).
    pub fn is_radial(&self, u: usize) -> bool {
        self.group_of[u].is_none()
            && self.walk.units[u].blocked.is_none()
            && self.walk.units[u].ends_at.is_some()
    }

    /// Rescale the radial directions of `graph` (training mode): group k by `factor(k)`.
    /// The training-mode function does not change (up to BatchNormalization's eps).
    pub fn rescale_radial(&self, graph: &mut Graph, factor: impl Fn(usize) -> f32) {
        for (k, members) in self.radial.iter().enumerate() {
            let c = factor(k);
            for &u in members {
                apply_edits(graph, &self.walk.units[u].edits, c);
            }
        }
    }

    /// Rescale `graph` in place: group k by `factor(k)` (spec §1). The function of the
    /// model does not change.
    pub fn rescale(&self, graph: &mut Graph, factor: impl Fn(usize) -> f32) {
        for (k, members) in self.groups.iter().enumerate() {
            let c = factor(k);
            for &u in members {
                apply_edits(graph, &self.walk.units[u].edits, c);
            }
        }
    }
}

/// The flat index ranges of a parameter with `dims` that an edit selects: contiguous runs
/// over the axes after `axis`, for the positions of the edit's channel along `axis`.
pub fn edit_runs(dims: &[usize], e: &Edit) -> Vec<std::ops::Range<usize>> {
    let stride: usize = dims[e.axis + 1..].iter().product();
    let len = dims[e.axis];
    let prefix: usize = dims[..e.axis].iter().product();
    let per = e.channels * e.block;
    // `rows` restricts axis 0, and is only used with axis >= 1 (grouped conv inputs).
    let rows_per_prefix: usize = dims[1..e.axis.max(1)].iter().product();
    let mut runs = vec![];
    for pre in 0..prefix {
        if let Some((lo, hi)) = e.rows {
            let r = pre / rows_per_prefix.max(1);
            if r < lo || r >= hi {
                continue;
            }
        }
        for o in 0..len / per {
            for i in 0..e.block {
                let base = (pre * len + o * per + e.channel * e.block + i) * stride;
                runs.push(base..base + stride);
            }
        }
    }
    runs
}

/// Multiply every parameter slice of `edits` by c^exponent.
pub fn apply_edits(graph: &mut Graph, edits: &[Edit], c: f32) {
    for e in edits {
        let Some(p) = graph.params.get_mut(&e.param) else {
            continue;
        };
        let runs = edit_runs(&p.dims, e);
        let TensorData::F32(v) = &mut p.data else {
            continue;
        };
        let f = c.powi(e.exponent);
        for r in runs {
            v[r].iter_mut().for_each(|x| *x *= f);
        }
    }
}

/// The number of trainable scalars: all parameters but BN running mean and variance.
pub fn trainable_params(g: &Graph) -> usize {
    let stats = g.bn_statistics();
    g.params
        .iter()
        .filter(|(k, _)| !stats.contains(k))
        .map(|(_, p)| p.len())
        .sum()
}

/// Analyse a graph with a rule set, BatchNormalization in inference form.
pub fn analyze(g: &Graph, rules: &RuleSet) -> Analysis {
    analyze_in(g, rules, BnMode::Inference)
}

/// Analyse a graph with a rule set, BatchNormalization as `mode` says.
pub fn analyze_in(g: &Graph, rules: &RuleSet, mode: BnMode) -> Analysis {
    let mut oracle = Oracle::new(rules);
    let walk = units::walk(g, &mut oracle, mode);
    let mut roots: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (u, unit) in walk.units.iter().enumerate() {
        if unit.blocked.is_none() {
            roots.entry(walk.find(u)).or_default().push(u);
        }
    }
    // Groups in the order of their first unit; a group none of whose units reaches a layer
    // and some of which end at a training-mode BatchNormalization is a radial direction.
    let mut sets: Vec<Vec<usize>> = roots.into_values().collect();
    sets.sort_by_key(|m| m[0]);
    let mut groups: Vec<Vec<usize>> = vec![];
    let mut radial: Vec<Vec<usize>> = vec![];
    let mut group_of = vec![None; walk.units.len()];
    for members in sets {
        let ends = members.iter().any(|&u| walk.units[u].ends_at.is_some());
        let reads = members.iter().any(|&u| !walk.units[u].consumers.is_empty());
        if ends && !reads {
            radial.push(members);
            continue;
        }
        for &u in &members {
            group_of[u] = Some(groups.len());
        }
        groups.push(members);
    }
    let redundant_biases = radial
        .iter()
        .flatten()
        .filter(|&&u| {
            let unit = &walk.units[u];
            let bias = g.layer(unit.producer).and_then(|l| l.bias);
            unit.edits.iter().any(|e| Some(e.param.as_str()) == bias)
        })
        .count();
    Analysis {
        mode,
        walk,
        group_of,
        groups,
        radial,
        redundant_biases,
        params: trainable_params(g),
        rules: rules.rules.len(),
        queries: oracle.queries(),
    }
}
