//! DAG blocks (spec §12; docs/ec-dag.md §5): the rescalings that are neither in a chain
//! block nor stars, such as the residual streams of a network without BatchNormalization,
//! units read by several layers and units in concatenations of BN-free Inception or
//! SqueezeNet, with the chain blocks they touch.
//!
//! Construction (every unit "after the free layer", spec §3 with the free layer first,
//! generalized): each group u has
//! - a designated out-edge d_u, held at magnitude 1: its out-edge scalar of largest
//!   magnitude among those whose head is nearest to the root (dist(u) = 1 + the smallest
//!   dist of its heads, the root at 0), so the designated edges form a tree into the root;
//! - a prefix: if some in-edge of its earliest unit is the designated out-edge of a tail t,
//!   u's chain is t's chain (P_u = P_t); otherwise its in-edge weight scalar of largest
//!   magnitude is a free skeleton value V_u and P_u = P_t·V_u (t the V's tail, P_root = 1).
//!
//! Every tensor is chained by input unit (positions that read no rescaling use the root
//! chain, P = 1), so every scalar x has the coordinate p = x·P_tail, the value of the path
//! (prefix of the tail) → x → (designated edges to the root); a V has q = V·P_tail. Chains
//! are products of V's, each V's own chain runs through earlier V's only, and the step of
//! [`super::step`] handles that form. Normalization scales the groups in increasing dist
//! (heads before tails), so each d_u is chosen on weights its heads already fixed.

use super::basis::{Block, BlockKind, Region, TensorRole, UnitPlan};
use super::{largest, layer_plans, owner, positions, EcPlan, Scalar};
use crate::analysis::{apply_edits, edit_runs, Analysis};
use crate::ir::Graph;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// The DAG block's groups.
pub struct Dag {
    pub groups: Vec<usize>,
    /// Why groups that are neither in blocks nor stars stay outside, by producer layer.
    pub outside: BTreeMap<usize, String>,
}

/// The group of every unit of each layer node, by output channel (None: no rescaling).
fn heads_of(a: &Analysis) -> HashMap<usize, Vec<Option<usize>>> {
    let mut m: HashMap<usize, Vec<Option<usize>>> = HashMap::new();
    for u in 0..a.unit_count() {
        m.entry(a.producer(u)).or_default().push(a.group_of[u]);
    }
    m
}

/// Why group k cannot be in a DAG block because of the kinds of its edits.
fn edit_obstacle(g: &Graph, a: &Analysis, k: usize) -> Option<String> {
    let stats = g.bn_statistics();
    for &u in &a.groups[k] {
        for e in a.in_edits(u) {
            match owner(g, &e.param) {
                Some((n, _)) if n == a.producer(u) => {}
                Some((n, false)) if a.passes(u).contains(&n) => {}
                _ if stats.contains(&e.param) => {}
                _ => return Some(format!("its scale passes parameter '{}'", e.param)),
            }
        }
        for e in a.out_edits(u) {
            let Some((n, true)) = owner(g, &e.param) else {
                return Some(format!("its out-edge '{}' is no layer weight", e.param));
            };
            if super::grouped(g, n) {
                return Some("it is read by a grouped convolution".into());
            }
        }
        if g.layer(a.producer(u)).is_none_or(|l| l.is_diagonal()) {
            return Some("its producer is no layer with input channels".into());
        }
    }
    None
}

/// The groups whose scalars a group's edits share a tensor with: tails (groups read by its
/// producer) and heads (groups its consumers emit).
fn neighbours(
    g: &Graph,
    a: &Analysis,
    k: usize,
    heads: &HashMap<usize, Vec<Option<usize>>>,
    readers: &HashMap<&str, BTreeSet<usize>>,
) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for &u in &a.groups[k] {
        for e in a.in_edits(u) {
            if let Some(r) = readers.get(e.param.as_str()) {
                out.extend(r.iter().copied());
            }
        }
        for e in a.out_edits(u) {
            if let Some((n, _)) = owner(g, &e.param) {
                out.extend(heads.get(&n).into_iter().flatten().flatten().copied());
            }
        }
    }
    out.remove(&k);
    out
}

/// Find the DAG groups among those not in `stars`, dissolving the chain blocks of `plan`
/// that they touch (their groups join).
pub fn find(g: &Graph, a: &Analysis, plan: &mut EcPlan, stars: &HashSet<usize>) -> Dag {
    let heads = heads_of(a);
    // Groups reading each parameter (out-edges).
    let mut readers: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    for (k, members) in a.groups.iter().enumerate() {
        for &u in members {
            for e in a.out_edits(u) {
                readers.entry(e.param.as_str()).or_default().insert(k);
            }
        }
    }
    let block_of = |plan: &EcPlan| -> HashMap<usize, usize> {
        let mut m = HashMap::new();
        for (bi, b) in plan.blocks.iter().enumerate() {
            for &u in b.hidden.iter().flatten() {
                if let Some(k) = a.group_of[u] {
                    m.insert(k, bi);
                }
            }
        }
        m
    };
    let mut outside = BTreeMap::new();
    let mut excluded: HashSet<usize> = HashSet::new();
    let mut w: BTreeSet<usize> = BTreeSet::new();
    let in_chain = block_of(plan);
    for k in 0..a.groups.len() {
        if stars.contains(&k) || in_chain.contains_key(&k) {
            continue;
        }
        match edit_obstacle(g, a, k) {
            None => {
                w.insert(k);
            }
            Some(why) => {
                excluded.insert(k);
                for &u in &a.groups[k] {
                    outside.entry(a.producer(u)).or_insert_with(|| why.clone());
                }
            }
        }
    }
    if w.is_empty() {
        return Dag {
            groups: vec![],
            outside,
        };
    }
    // Close the set: dissolve the chain blocks W touches, drop groups next to a rescaling
    // outside (a group left to the norm gauge), until nothing changes.
    loop {
        let in_chain = block_of(plan);
        let mut dissolve: BTreeSet<usize> = BTreeSet::new();
        let mut drop: Vec<(usize, String)> = vec![];
        for &k in &w {
            for n in neighbours(g, a, k, &heads, &readers) {
                if w.contains(&n) {
                    continue;
                }
                if let Some(&bi) = in_chain.get(&n) {
                    dissolve.insert(bi);
                } else {
                    let why = if stars.contains(&n) {
                        "it shares a tensor with a star".to_string()
                    } else {
                        "it shares a tensor with a rescaling that stays outside".to_string()
                    };
                    drop.push((k, why));
                    break;
                }
            }
        }
        if dissolve.is_empty() && drop.is_empty() {
            break;
        }
        for (k, why) in drop {
            w.remove(&k);
            excluded.insert(k);
            for &u in &a.groups[k] {
                outside.entry(a.producer(u)).or_insert_with(|| why.clone());
            }
        }
        for &bi in dissolve.iter().rev() {
            let b = plan.blocks.remove(bi);
            for &u in b.hidden.iter().flatten() {
                if let Some(k) = a.group_of[u] {
                    match edit_obstacle(g, a, k) {
                        None => {
                            w.insert(k);
                        }
                        Some(why) => {
                            excluded.insert(k);
                            outside.entry(a.producer(u)).or_insert(why);
                        }
                    }
                }
            }
        }
    }
    Dag {
        groups: w.into_iter().collect(),
        outside,
    }
}

/// Normalize the DAG groups of `g` in place and build their block. Returns None when there
/// are none; groups whose out-edges are all zero are listed as degenerate (they keep their
/// scale and the block holds nothing for them... they make the whole block degenerate).
pub fn build(g: &mut Graph, a: &Analysis, dag: &Dag) -> Result<Option<Block>, Vec<usize>> {
    if dag.groups.is_empty() {
        return Ok(None);
    }
    let w: HashSet<usize> = dag.groups.iter().copied().collect();
    let heads = heads_of(a);
    // Each layer weight's node, and how to find an element's row (output channel): the
    // per-element questions below ask this millions of times on a large network.
    let rows_of: HashMap<String, (usize, usize, usize)> = (0..g.nodes.len())
        .filter_map(|n| g.layer(n).filter(|l| !l.is_diagonal()).map(|l| (n, l)))
        .map(|(n, l)| {
            let dims = &g.params[l.weight].dims;
            let inner = dims[l.out_axis + 1..].iter().product::<usize>();
            (l.weight.to_string(), (n, inner, dims[l.out_axis]))
        })
        .collect();
    let head_group = |node: usize, o: usize| -> Option<usize> {
        heads
            .get(&node)
            .and_then(|v| v.get(o).copied().flatten())
            .filter(|k| w.contains(k))
    };
    // dist: 1 + the smallest dist of a head (the root at 0), by relaxation from the root.
    let mut out_heads: HashMap<usize, BTreeSet<Option<usize>>> = HashMap::new();
    for &k in &dag.groups {
        let mut hs = BTreeSet::new();
        for &u in &a.groups[k] {
            for e in a.out_edits(u) {
                let (n, _) = owner(g, &e.param).expect("a layer weight");
                let l = g.layer(n).expect("a layer");
                for o in 0..g.params[&e.param].dims[l.out_axis] {
                    hs.insert(head_group(n, o));
                }
            }
        }
        out_heads.insert(k, hs);
    }
    let mut dist: HashMap<usize, usize> = HashMap::new();
    let mut tails_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut queue = VecDeque::new();
    for (&k, hs) in &out_heads {
        for h in hs.iter().flatten() {
            tails_of.entry(*h).or_default().push(k);
        }
        if hs.contains(&None) {
            dist.insert(k, 1);
            queue.push_back(k);
        }
    }
    while let Some(h) = queue.pop_front() {
        for &t in tails_of.get(&h).into_iter().flatten() {
            if !dist.contains_key(&t) {
                dist.insert(t, dist[&h] + 1);
                queue.push_back(t);
            }
        }
    }
    let mut order: Vec<usize> = dag.groups.clone();
    if order.iter().any(|k| !dist.contains_key(k)) {
        return Err(order);
    }
    order.sort_by_key(|k| (dist[k], *k));
    // Designated out-edges, heads first; normalize each group to |d| = 1.
    let mut designated: HashMap<usize, Scalar> = HashMap::new();
    let mut degenerate = vec![];
    for &k in &order {
        // Only out-edges to a head one step nearer the root.
        let toward_root = |param: &str, i: usize| {
            let (n, inner, rows) = rows_of[param];
            let hd = head_group(n, (i / inner) % rows).map_or(0, |h| dist[&h]);
            hd + 1 == dist[&k]
        };
        let out = a.groups[k].iter().flat_map(|&u| a.out_edits(u));
        match largest(g, out, toward_root) {
            Some(d) => {
                let m = g.params[&d.param].get_f32(d.index).abs();
                for &u in &a.groups[k] {
                    apply_edits(g, a.edits(u), m);
                }
                designated.insert(k, d);
            }
            None => degenerate.push(k),
        }
    }
    if !degenerate.is_empty() {
        return Err(degenerate);
    }
    let fixed_at: HashMap<(String, usize), usize> = designated
        .iter()
        .map(|(&k, s)| ((s.param.clone(), s.index), k))
        .collect();
    // Chains in topological order of each group's earliest unit. Chain 0 is the root's.
    let mut topo: Vec<usize> = dag.groups.clone();
    topo.sort_by_key(|&k| (a.producer(a.groups[k][0]), k));
    let mut chain_of_group: HashMap<usize, u32> = HashMap::new();
    let mut monomials: Vec<Vec<u32>> = vec![vec![]];
    let mut v: Vec<Scalar> = vec![];
    // The chain of the unit at a position of a layer's input: by the tails' out-edges.
    let mut pos_chain: HashMap<String, Vec<u32>> = HashMap::new();
    let tail_chain = |pos_chain: &HashMap<String, Vec<u32>>, param: &str, pos: usize| -> u32 {
        pos_chain.get(param).map_or(0, |c| c[pos])
    };
    for &k in &topo {
        let e0 = a.groups[k][0];
        let producer = a.producer(e0);
        let l = g.layer(producer).expect("DAG producers are layers");
        let in_axis = l.in_axis.expect("not diagonal");
        let wname = l.weight.to_string();
        let p = &g.params[&wname];
        let row = a
            .in_edits(e0)
            .find(|e| e.param == wname)
            .expect("the producer's row")
            .clone();
        let idx: Vec<usize> = edit_runs(&p.dims, &row).into_iter().flatten().collect();
        let in_pos =
            |i: usize| (i / p.dims[in_axis + 1..].iter().product::<usize>()) % p.dims[in_axis];
        let mono = if let Some(&i) = idx
            .iter()
            .find(|&&i| fixed_at.contains_key(&(wname.clone(), i)))
        {
            // The designated out-edge of a tail: no new V.
            monomials[tail_chain(&pos_chain, &wname, in_pos(i)) as usize].clone()
        } else {
            // A new V: the row's scalar of largest magnitude.
            let Some(best) = largest(g, std::iter::once(&row), |_, _| true) else {
                return Err(vec![k]);
            };
            let tail = tail_chain(&pos_chain, &wname, in_pos(best.index));
            let mut m = monomials[tail as usize].clone();
            m.push(v.len() as u32);
            v.push(best);
            m
        };
        let c = monomials.len() as u32;
        monomials.push(mono);
        chain_of_group.insert(k, c);
        // Record this group's positions in every tensor that reads it.
        for &u in &a.groups[k] {
            for e in a.out_edits(u) {
                let dims = &g.params[&e.param].dims;
                let pc = pos_chain
                    .entry(e.param.clone())
                    .or_insert_with(|| vec![0; dims[e.axis]]);
                for i in positions(dims, e) {
                    pc[i] = c;
                }
            }
        }
    }
    // Tensors: every layer weight and bias the groups' edits touch, chained by input unit.
    let stats = g.bn_statistics();
    let mut params: BTreeSet<String> = BTreeSet::new();
    for &k in &dag.groups {
        for &u in &a.groups[k] {
            for e in a.edits(u) {
                if !stats.contains(&e.param) {
                    params.insert(e.param.clone());
                }
            }
        }
    }
    let mut tensors = vec![];
    for name in &params {
        let dims = g.params[name].dims.clone();
        let (node, is_weight) = owner(g, name).expect("DAG tensors are read by a node");
        let mut t = match (is_weight, g.layer(node)) {
            (true, Some(l)) => {
                let ax = l.in_axis.expect("not diagonal");
                let chain = pos_chain.get(name).cloned().unwrap_or_default();
                let chain = if chain.iter().all(|&c| c == 0) {
                    vec![]
                } else {
                    chain
                };
                TensorRole::new(name, &dims, ax, chain)
            }
            _ => TensorRole::new(name, &dims, 0, vec![]),
        };
        for (kk, s) in v.iter().enumerate() {
            if &s.param == name {
                t.v.push((kk as u32, s.index));
                t.fixed.push(s.index);
            }
        }
        for s in designated.values().filter(|s| &s.param == name) {
            t.fixed.push(s.index);
        }
        t.fixed.sort_unstable();
        let region = if t.chain.is_empty() {
            Region::Free
        } else {
            Region::After
        };
        tensors.push((t, region));
    }
    let units = topo
        .iter()
        .map(|&k| UnitPlan {
            units: a.groups[k].clone(),
            chain: chain_of_group[&k],
            incoming: false,
            designated: designated[&k].clone(),
        })
        .collect();
    Ok(Some(Block {
        kind: BlockKind::Dag,
        v,
        monomials,
        layers: layer_plans(g, tensors),
        units,
    }))
}
