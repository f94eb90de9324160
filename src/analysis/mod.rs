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
pub use units::{Block, Edit, ScaleInvariant, Unit, Walk};

/// The result of analysing one model.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub walk: Walk,
    /// For each unit, its group (index into `groups`), or None when blocked.
    pub group_of: Vec<Option<usize>>,
    /// Independent rescalings: the units of each (tied) group.
    pub groups: Vec<Vec<usize>>,
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
    /// m - H: the dimension of the equivalence-class space.
    pub fn class_dim(&self) -> usize {
        self.params - self.rescalings()
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

/// Analyse a graph with a rule set.
pub fn analyze(g: &Graph, rules: &RuleSet) -> Analysis {
    let mut oracle = Oracle::new(rules);
    let walk = units::walk(g, &mut oracle);
    let mut roots: BTreeMap<usize, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<usize>> = vec![];
    let mut group_of = vec![None; walk.units.len()];
    for (u, unit) in walk.units.iter().enumerate() {
        if unit.blocked.is_some() {
            continue;
        }
        let r = walk.find(u);
        let k = *roots.entry(r).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[k].push(u);
        group_of[u] = Some(k);
    }
    Analysis {
        walk,
        group_of,
        groups,
        params: trainable_params(g),
        rules: rules.rules.len(),
        queries: oracle.queries(),
    }
}
