//! Star blocks (spec §11, §12): rescalings whose in-edges all start at the root and whose
//! out-edges all end at it. In a network with BatchNormalization in training mode that is
//! every rescaling: each BN's (gamma_j, beta_j) starts a unit, and the layers that read it
//! end at the next BN (radial rows) or at the output. Tied units (a residual stream written
//! by several BNs and read by several convs), units read by several layers and units placed
//! in a concatenation are stars like any other.
//!
//! The construction (spec §3 with the free layer first; `docs/ec-dag.md`): a star's
//! in-edge tensors are free (p = w), V_c is the in-edge weight scalar of largest magnitude
//! of its first (earliest) unit, its out-edge tensors are chained by input unit (p = w·V_c), and its designated scalar,
//! the out-edge scalar of largest magnitude, is held at magnitude 1. Both choices compare
//! scalars that one rescaling multiplies alike, so they are the same for every model of a
//! class, which keeps the gauge canonical. The first unit of a tied group is upstream of
//! every out-edge of the group (a residual stream flows from its first BN through every
//! addition), so p = w·V is a path value. Stars that share a tensor form one block.

use super::basis::{Block, BlockKind, Region, TensorRole, UnitPlan};
use super::{largest, layer_plans, owner, positions, Scalar};
use crate::analysis::{apply_edits, Analysis};
use crate::ir::Graph;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The stars of a model: for each, the analysis group.
pub struct Stars {
    pub groups: Vec<usize>,
    /// Why groups outside chain blocks are not stars, by producer layer.
    pub outside: BTreeMap<usize, String>,
}

/// Find the stars among the groups not in `taken` (groups in chain blocks), whose tensors
/// are not in `taken_params` (tensors of chain blocks).
pub fn find(
    g: &Graph,
    a: &Analysis,
    taken: &HashSet<usize>,
    taken_params: &HashSet<String>,
) -> Stars {
    // Parameters that some rescaling divides (out-edges of a unit in H), and layers whose
    // outputs are rescalings.
    let mut read_by_units: HashSet<&str> = HashSet::new();
    let mut emits: HashSet<usize> = HashSet::new();
    for members in &a.groups {
        for &u in members {
            read_by_units.extend(a.out_edits(u).map(|e| e.param.as_str()));
            emits.insert(a.producer(u));
        }
    }
    let mut groups = vec![];
    let mut outside = BTreeMap::new();
    for (k, members) in a.groups.iter().enumerate() {
        if taken.contains(&k) {
            continue;
        }
        let why = (|| -> Option<String> {
            for &u in members {
                for e in a.in_edits(u) {
                    if taken_params.contains(&e.param) {
                        return Some(format!("its in-edge '{}' is in a chain block", e.param));
                    }
                    // Its producer's weight and bias, or a bias added on the way (an in-edge
                    // from the root too); never a statistic.
                    match owner(g, &e.param) {
                        Some((n, _)) if n == a.producer(u) => {}
                        Some((n, false))
                            if a.passes(u).contains(&n)
                                && !g.bn_statistics().contains(&e.param) => {}
                        _ => return Some(format!("its scale passes parameter '{}'", e.param)),
                    }
                    if read_by_units.contains(e.param.as_str()) {
                        return Some(format!(
                            "its producer {} reads rescalable units (a DAG block takes it)",
                            g.node_label(a.producer(u))
                        ));
                    }
                }
                for e in a.out_edits(u) {
                    if taken_params.contains(&e.param) {
                        return Some(format!("its out-edge '{}' is in a chain block", e.param));
                    }
                    let Some((n, true)) = owner(g, &e.param) else {
                        return Some(format!("its out-edge '{}' is no layer weight", e.param));
                    };
                    if matches!(&g.nodes[n].op, crate::ir::Op::Conv(c) if c.group > 1) {
                        return Some("it is read by a grouped convolution".into());
                    }
                    if emits.contains(&n) {
                        return Some(format!(
                            "its consumer {} emits rescalable units (a DAG block takes it)",
                            g.node_label(n)
                        ));
                    }
                }
            }
            if members.iter().all(|&u| a.out_edits(u).next().is_none()) {
                return Some("no layer reads it".into());
            }
            None
        })();
        match why {
            None => groups.push(k),
            Some(why) => {
                for &u in members {
                    outside.entry(a.producer(u)).or_insert_with(|| why.clone());
                }
            }
        }
    }
    // A chained tensor must have a star behind every input position: drop the stars that
    // a consumer reads together with channels that are no star, until none is left.
    loop {
        let mut covered: HashMap<&str, Vec<bool>> = HashMap::new();
        for &k in &groups {
            for &u in &a.groups[k] {
                for e in a.out_edits(u) {
                    let dims = &g.params[&e.param].dims;
                    let pos = covered
                        .entry(e.param.as_str())
                        .or_insert_with(|| vec![false; dims[e.axis]]);
                    for i in positions(dims, e) {
                        pos[i] = true;
                    }
                }
            }
        }
        let partial: HashSet<&str> = covered
            .iter()
            .filter(|(_, c)| c.iter().any(|x| !x))
            .map(|(p, _)| *p)
            .collect();
        if partial.is_empty() {
            break;
        }
        groups.retain(|&k| {
            let hit = a.groups[k]
                .iter()
                .flat_map(|&u| a.out_edits(u))
                .find(|e| partial.contains(e.param.as_str()));
            if let Some(e) = hit {
                let why = format!(
                    "a layer that reads it ('{}') also reads channels that are no star",
                    e.param
                );
                for &u in &a.groups[k] {
                    outside.entry(a.producer(u)).or_insert_with(|| why.clone());
                }
            }
            hit.is_none()
        });
    }
    Stars { groups, outside }
}

/// Normalize the stars of `g` in place (spec §4: each designated scalar to magnitude 1)
/// and build their blocks. Returns the blocks and the number of stars left as they were
/// because their in-edge weights or out-edges are all zero (they stay outside).
pub fn build(g: &mut Graph, a: &Analysis, stars: &Stars) -> (Vec<Block>, Vec<usize>) {
    let is_weight = |g: &Graph, p: &str| owner(g, p).is_some_and(|(_, w)| w);
    // Designated scalar and V of each star, on the normalized weights.
    let mut chosen: Vec<(usize, Scalar, Scalar)> = vec![];
    let mut degenerate = vec![];
    for &k in &stars.groups {
        let members = &a.groups[k];
        let out = members.iter().flat_map(|&u| a.out_edits(u));
        let Some(d) = largest(g, out, |_, _| true) else {
            degenerate.push(k);
            continue;
        };
        let c = g.params[&d.param].get_f32(d.index).abs();
        for &u in members {
            apply_edits(g, a.edits(u), c);
        }
        // V: an in-edge of the group's first unit (its earliest producer, e.g. the BN
        // that starts a residual stream), so that w·V is the value of a real path for every
        // out-edge; any in-edge if those are all zero.
        let weights = |u: usize| {
            a.in_edits(u)
                .filter(|e| is_weight(g, &e.param))
                .collect::<Vec<_>>()
        };
        let v = largest(g, weights(members[0]).into_iter(), |_, _| true)
            .or_else(|| largest(g, members.iter().flat_map(|&u| weights(u)), |_, _| true));
        let Some(v) = v else {
            degenerate.push(k);
            continue;
        };
        chosen.push((k, d, v));
    }
    // Blocks: stars joined by the tensors they share.
    let tensors_of = |k: usize| -> BTreeSet<String> {
        a.groups[k]
            .iter()
            .flat_map(|&u| a.edits(u).iter().map(|e| e.param.clone()))
            .collect()
    };
    let mut parent: Vec<usize> = (0..chosen.len()).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut first_with: HashMap<String, usize> = HashMap::new();
    for (i, (k, _, _)) in chosen.iter().enumerate() {
        for t in tensors_of(*k) {
            match first_with.get(&t) {
                Some(&j) => {
                    let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                    parent[ri.max(rj)] = ri.min(rj);
                }
                None => {
                    first_with.insert(t, i);
                }
            }
        }
    }
    let mut comps: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..chosen.len() {
        let r = find(&mut parent, i);
        comps.entry(r).or_default().push(i);
    }
    // A block that shares a tensor with a degenerate star would leave positions of a
    // chained tensor without a chain: it stays outside too.
    let bad: HashSet<String> = degenerate.iter().flat_map(|&k| tensors_of(k)).collect();
    let mut blocks = vec![];
    for idx in comps.into_values() {
        if idx
            .iter()
            .any(|&i| tensors_of(chosen[i].0).iter().any(|t| bad.contains(t)))
        {
            degenerate.extend(idx.iter().map(|&i| chosen[i].0));
            continue;
        }
        blocks.push(block(g, a, idx.iter().map(|&i| &chosen[i])));
    }
    degenerate.sort_unstable();
    (blocks, degenerate)
}

/// One star block from its stars (group, designated, V), chain c = position in the list.
fn block<'c>(
    g: &Graph,
    a: &Analysis,
    stars: impl Iterator<Item = &'c (usize, Scalar, Scalar)>,
) -> Block {
    let stars: Vec<&(usize, Scalar, Scalar)> = stars.collect();
    // Per tensor: in-edge (free) or out-edge (chained along the edit's axis).
    let mut free: BTreeMap<String, TensorRole> = BTreeMap::new();
    let mut chained: BTreeMap<String, (TensorRole, Vec<Option<u32>>)> = BTreeMap::new();
    let mut units = vec![];
    let mut v = vec![];
    for (c, (k, d, vs)) in stars.iter().enumerate() {
        let c = c as u32;
        for &u in &a.groups[*k] {
            for e in a.in_edits(u) {
                let dims = &g.params[&e.param].dims;
                free.entry(e.param.clone())
                    .or_insert_with(|| TensorRole::new(&e.param, dims, 0, vec![]));
            }
            for e in a.out_edits(u) {
                let dims = &g.params[&e.param].dims;
                let (_, pos) = chained.entry(e.param.clone()).or_insert_with(|| {
                    (
                        TensorRole::new(&e.param, dims, e.axis, vec![]),
                        vec![None; dims[e.axis]],
                    )
                });
                for i in positions(dims, e) {
                    pos[i] = Some(c);
                }
            }
        }
        units.push(UnitPlan {
            units: a.groups[*k].clone(),
            chain: c,
            incoming: false,
            designated: d.clone(),
        });
        v.push(vs.clone());
        free.get_mut(&vs.param)
            .expect("V is an in-edge")
            .v
            .push((c, vs.index));
        chained
            .get_mut(&d.param)
            .expect("the designated scalar is an out-edge")
            .0
            .fixed
            .push(d.index);
    }
    let mut tensors = vec![];
    for (_, mut t) in free {
        t.fixed = t.v.iter().map(|&(_, i)| i).collect();
        t.fixed.sort_unstable();
        tensors.push((t, Region::Free));
    }
    for (_, (mut t, pos)) in chained {
        // `find` admits only consumers with a star behind every input position, and stars
        // that share a tensor are in one block.
        t.chain = pos
            .iter()
            .map(|c| c.expect("every position of a chained tensor has a star"))
            .collect();
        t.fixed.sort_unstable();
        tensors.push((t, Region::After));
    }
    Block {
        kind: BlockKind::Star,
        monomials: Block::simple_monomials(v.len()),
        v,
        layers: layer_plans(g, tensors),
        units,
    }
}
