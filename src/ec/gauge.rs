//! Gauge normalization (spec §4): rescale every rescalable unit so that the model becomes the
//! canonical representative of its class. The function does not change, signs are kept,
//! and two models that differ by a rescaling normalize to the same weights.
//!
//! Each unit is fixed by one quantity that only depends on units fixed before it:
//! - a block unit before its block's free layer: its designated in-edge gets magnitude 1
//!   (in topological order);
//! - every other untied or tied group: the norm of its first unit's incoming slices (the
//!   producer's row and bias, statistics passed through) becomes 1, fixed at that unit's
//!   place in topological order;
//! - a block unit at or after the free layer: its designated out-edge gets magnitude 1, last,
//!   from the block's end backwards;
//! - a star (spec §11, §12): its designated out-edge gets magnitude 1 ([`super::star`]; its
//!   neighbours are all the root, so the order does not matter).

use super::{designate, Designated, EcPlan};
use crate::analysis::{apply_edits, edit_runs, Analysis};
use crate::ir::Graph;
use std::collections::{HashMap, HashSet};

/// What normalization did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GaugeStats {
    pub units: usize,
    /// Units left as they were because their quantity was zero.
    pub degenerate: usize,
}

/// Normalize `g` (see the module doc): returns the canonical graph, and fills in the
/// plan's designated weights.
pub(crate) fn normalize(
    g: &Graph,
    a: &Analysis,
    plan: &mut EcPlan,
    stars: &HashSet<usize>,
) -> (Graph, GaugeStats) {
    let mut out = g.clone();
    let mut stats = GaugeStats::default();
    // Where each block unit sits: (block, hidden layer).
    let mut place: HashMap<usize, (usize, usize)> = HashMap::new();
    for (bi, b) in plan.blocks.iter_mut().enumerate() {
        b.designated = vec![vec![]; b.hidden.len()];
        for (l, hid) in b.hidden.iter().enumerate() {
            for &u in hid {
                place.insert(u, (bi, l));
            }
        }
    }
    let scale = |out: &mut Graph, members: &[usize], c: f32, stats: &mut GaugeStats| {
        if c.is_finite() && c > 0.0 {
            for &m in members {
                apply_edits(out, a.edits(m), c);
            }
        } else {
            stats.degenerate += members.len();
        }
        stats.units += members.len();
    };
    let magnitude =
        |out: &Graph, d: &Designated| out.params[&d.weight.param].get_f32(d.weight.index).abs();
    // Forward: groups in the order of their first unit.
    let mut order: Vec<usize> = (0..a.groups.len()).filter(|k| !stars.contains(k)).collect();
    order.sort_by_key(|&k| a.groups[k][0]);
    for k in order {
        let members = &a.groups[k];
        let first = members[0];
        let c = match place.get(&first) {
            Some(&(bi, l)) if l < plan.blocks[bi].free => {
                if plan.blocks[bi].designated[l].is_empty() {
                    let (r, ds) = designate(&out, a, &plan.blocks[bi], l);
                    plan.blocks[bi].designated[l] = ds;
                    plan.blocks[bi].rotations[l] = r;
                }
                let d = plan.blocks[bi].designated[l]
                    .iter()
                    .find(|d| d.unit == first)
                    .expect("designated")
                    .clone();
                1.0 / magnitude(&out, &d)
            }
            Some(_) => continue,
            None => {
                let mut sq = 0f64;
                for e in a.in_edits(first) {
                    let p = &out.params[&e.param];
                    for r in edit_runs(&p.dims, e) {
                        sq += r.map(|i| (p.get_f32(i) as f64).powi(2)).sum::<f64>();
                    }
                }
                (1.0 / sq.sqrt()) as f32
            }
        };
        scale(&mut out, members, c, &mut stats);
    }
    // Backward: out-edges, from each block's end.
    for bi in 0..plan.blocks.len() {
        let b = &plan.blocks[bi];
        for l in (b.free..b.hidden.len()).rev() {
            let (r, ds) = designate(&out, a, &plan.blocks[bi], l);
            for d in &ds {
                let c = magnitude(&out, d);
                scale(&mut out, &[d.unit], c, &mut stats);
            }
            plan.blocks[bi].designated[l] = ds;
            plan.blocks[bi].rotations[l + 1] = r;
        }
    }
    // The free layers' skeleton (the V of spec §5), chosen on the canonical weights.
    for b in &mut plan.blocks {
        b.rotations[b.free] = super::free_rotation(&out, a, b);
    }
    (out, stats)
}
