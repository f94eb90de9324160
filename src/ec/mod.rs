//! The EC pass (spec §3, §4, §8): from the symmetry analysis, the EC-SGD blocks of a model
//! (chains of layers joined by untied units with one producer and one consumer), one
//! designated skeleton weight per hidden unit with the free layer of each block, and the
//! gauge normalization that turns a model into the canonical representative of its class.
//!
//! Designated weights (a simplification of spec §3's skeleton that keeps §4 exact for any
//! widths): in a block with layers L_0..L_k and hidden layers H_0..H_{k-1} (H_l the output
//! of L_l), a unit j of H_l uses its in-edge (row j of L_l) when l < s and its out-edge
//! (column j of L_{l+1}) when l >= s, where L_s is the free layer. The pair is the "mod"
//! pattern rotated by the offset r in 0..64 that keeps the layer's designated weights
//! furthest from zero relative to their row or column (see [`designate`]); conv edges use
//! the centre tap, flattened channels the centre position of their block of features. The
//! designated weights are chosen during normalization, so the plan holds them after it.

pub mod balance;
pub mod basis;
mod dag;
mod gauge;
pub mod graph;
pub mod program;
pub mod reference;
pub mod report;
mod skeleton;
mod star;
pub mod step;

pub use basis::Basis;
use gauge::normalize;
pub use gauge::GaugeStats;
use skeleton::free_rotation;

use crate::analysis::{edit_runs, Analysis, BnMode, Edit};
use crate::ir::{Graph, Op};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One weight scalar, by parameter name and flat index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scalar {
    pub param: String,
    pub index: usize,
}

/// How a hidden unit's gauge is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Designated {
    pub unit: usize,
    /// true: the unit's in-edge (its own row); false: its out-edge.
    pub incoming: bool,
    pub weight: Scalar,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct EcBlock {
    /// Layer node indices L_0..L_k.
    pub layers: Vec<usize>,
    /// Units of each hidden layer H_0..H_{k-1}.
    pub hidden: Vec<Vec<usize>>,
    /// Index s of the free layer in `layers`.
    pub free: usize,
    /// One per hidden unit, in hidden-layer order.
    pub designated: Vec<Vec<Designated>>,
    /// The rotation r of the "mod" skeleton of each weight layer: in-edges (j, (j+r) mod
    /// in) before the free layer and in it, out-edges ((i+r) mod out, i) after it.
    pub rotations: Vec<usize>,
    /// Scalars of the block's weights and biases.
    pub params: usize,
}

/// The chain blocks while they are built: [`plan`] finds them, [`normalize`] chooses their
/// designated weights; [`convert_with`] then turns them into [`Basis`] blocks.
#[derive(Debug, Clone)]
pub(crate) struct EcPlan {
    pub blocks: Vec<EcBlock>,
    /// Why each layer that creates units is outside every block.
    pub outside: BTreeMap<usize, String>,
}

fn layer_params(g: &Graph, node: usize) -> impl Iterator<Item = &String> {
    g.nodes[node]
        .data_inputs()
        .iter()
        .skip(1)
        .filter(|p| g.params.contains_key(*p))
}

/// Why a unit cannot join a block, or None if it can.
fn unit_obstacle(g: &Graph, a: &Analysis, u: usize) -> Option<String> {
    if let Some(b) = a.blocked(u) {
        return Some(format!("blocked at {}", g.node_label(b.node)));
    }
    if a.is_radial(u) {
        return Some(
            "its channels are radial directions (a training-mode BatchNormalization follows)"
                .into(),
        );
    }
    if a.tied(u).is_some_and(|t| t.len() > 1) {
        return Some("tied to other units".into());
    }
    if a.consumers(u).len() != 1 {
        return Some(format!("{} consumer layers", a.consumers(u).len()));
    }
    if !a.placed(u).is_empty() {
        return Some("goes through a concatenation".into());
    }
    let via = a.passes(u);
    let inner = &via[1..via.len().saturating_sub(1)];
    if let Some(&n) = inner.iter().find(|&&n| {
        !matches!(
            g.nodes[n].op,
            Op::Relu
                | Op::LeakyRelu { .. }
                | Op::PRelu
                | Op::Clip { .. }
                | Op::MaxPool(_)
                | Op::AveragePool { .. }
                | Op::GlobalAveragePool
                | Op::GlobalMaxPool
                | Op::Dropout { .. }
                | Op::Identity
                | Op::Flatten { .. }
                | Op::Reshape { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Transpose { .. }
        )
    }) {
        return Some(format!(
            "passes {} ({})",
            g.node_label(n),
            g.nodes[n].op.onnx_name()
        ));
    }
    None
}

/// The node that reads `param`, and whether `param` is a layer's weight there (false: a
/// layer's bias, or an operand of another op, such as the Add of a bias after a
/// normalization without affine part).
pub(crate) fn owner(g: &Graph, param: &str) -> Option<(usize, bool)> {
    (0..g.nodes.len()).find_map(|n| {
        if let Some(l) = g.layer(n) {
            if l.weight == param {
                return Some((n, true));
            }
        }
        g.nodes[n]
            .data_inputs()
            .iter()
            .any(|i| i == param)
            .then_some((n, false))
    })
}

/// The positions along `e.axis` that an edit's channel occupies.
pub(crate) fn positions(dims: &[usize], e: &Edit) -> impl Iterator<Item = usize> {
    let per = e.channels * e.block;
    let (channel, block) = (e.channel, e.block);
    (0..dims[e.axis] / per)
        .flat_map(move |o| (0..block).map(move |i| o * per + channel * block + i))
}

/// Tensors with their regions as layer plans: a layer's weight and its bias in one plan,
/// any other tensor (a bias added after a layer) in its own, in node order.
pub(crate) fn layer_plans(
    g: &Graph,
    tensors: Vec<(basis::TensorRole, basis::Region)>,
) -> Vec<basis::LayerPlan> {
    let mut keyed: Vec<(usize, bool, basis::LayerPlan)> = tensors
        .into_iter()
        .map(|(t, region)| {
            let (node, is_weight) = owner(g, &t.param).expect("block tensors are read by a node");
            let plan = basis::LayerPlan {
                node,
                label: g.node_label(node),
                region,
                weight: t,
                bias: None,
            };
            (node, is_weight, plan)
        })
        .collect();
    keyed.sort_by_key(|(n, w, _)| (*n, !*w));
    let mut out: Vec<basis::LayerPlan> = vec![];
    for (node, is_weight, l) in keyed {
        let bias_of_layer = g.layer(node).and_then(|x| x.bias) == Some(l.weight.param.as_str());
        match out.last_mut() {
            Some(m) if m.node == node && !is_weight && bias_of_layer && m.bias.is_none() => {
                m.bias = Some(l.weight)
            }
            _ => out.push(l),
        }
    }
    out
}

/// The scalar of largest magnitude among the slices `edits` select, keeping only flat
/// indices `keep` accepts (first on ties); None if there is none or it is zero.
pub(crate) fn largest<'e>(
    g: &Graph,
    edits: impl Iterator<Item = &'e Edit>,
    keep: impl Fn(&str, usize) -> bool,
) -> Option<Scalar> {
    let mut best: Option<(f32, Scalar)> = None;
    for e in edits {
        let p = &g.params[&e.param];
        for i in edit_runs(&p.dims, e).into_iter().flatten() {
            if !keep(&e.param, i) {
                continue;
            }
            let m = p.get_f32(i).abs();
            if best.as_ref().is_none_or(|(b, _)| m > *b) {
                best = Some((
                    m,
                    Scalar {
                        param: e.param.clone(),
                        index: i,
                    },
                ));
            }
        }
    }
    best.filter(|(m, _)| *m > 0.0).map(|(_, s)| s)
}

fn grouped(g: &Graph, node: usize) -> bool {
    matches!(&g.nodes[node].op, Op::Conv(c) if c.group > 1)
}

/// The whole EC pass on a model: the symmetry analysis (default rules, BatchNormalization in
/// training mode, as `ecc train` runs it), the basis and the canonical, gauge-normalized
/// model (which keeps the inference function too).
pub struct Conversion {
    pub analysis: Analysis,
    pub basis: Basis,
    pub canon: Graph,
    pub stats: GaugeStats,
}

/// Analyse `g` (training mode), build its basis and normalize it (spec §3, §4, §11, §12).
pub fn convert(g: &Graph) -> Conversion {
    let rules = crate::analysis::RuleSet::default_rules();
    convert_with(g, crate::analysis::analyze_in(g, &rules, BnMode::Training))
}

/// The EC pass with a given analysis: chain blocks first (spec §3), then stars among the
/// rest (spec §11, §12), the gauge of both fixed in one canonical form.
pub fn convert_with(g: &Graph, analysis: Analysis) -> Conversion {
    let a = &analysis;
    let mut plan = plan(g, a);
    let mut in_chains: HashSet<usize> = HashSet::new();
    let mut chain_params: HashSet<String> = HashSet::new();
    for b in &plan.blocks {
        for &u in b.hidden.iter().flatten() {
            in_chains.extend(a.group_of[u]);
        }
        for &l in &b.layers {
            chain_params.extend(layer_params(g, l).cloned());
        }
    }
    // Units that a chain block's last layer emits keep today's treatment (fixed by norm).
    for (k, members) in a.groups.iter().enumerate() {
        if members
            .iter()
            .any(|&u| a.in_edits(u).any(|e| chain_params.contains(&e.param)))
        {
            in_chains.insert(k);
        }
    }
    let stars = star::find(g, a, &in_chains, &chain_params);
    let star_set: HashSet<usize> = stars.groups.iter().copied().collect();
    // The rest of the rescalings, with the chain blocks they touch (dissolved here).
    let dag = dag::find(g, a, &mut plan, &star_set);
    let mut skip = star_set.clone();
    skip.extend(dag.groups.iter().copied());
    let (mut canon, mut stats) = normalize(g, a, &mut plan, &skip);
    let (mut star_blocks, mut degenerate) = star::build(&mut canon, a, &stars);
    stats.units += dag.groups.iter().map(|&k| a.groups[k].len()).sum::<usize>();
    match dag::build(&mut canon, a, &dag) {
        Ok(Some(b)) => star_blocks.push(b),
        Ok(None) => {}
        Err(groups) => degenerate.extend(groups),
    }
    stats.units += stars
        .groups
        .iter()
        .map(|&k| a.groups[k].len())
        .sum::<usize>();
    stats.degenerate += degenerate.iter().map(|&k| a.groups[k].len()).sum::<usize>();
    let mut outside = plan.outside.clone();
    let mut blocks: Vec<basis::Block> = plan
        .blocks
        .iter()
        .map(|b| chain_block(&canon, a, b))
        .collect();
    for b in &star_blocks {
        for &u in b.units.iter().flat_map(|p| p.units.iter()) {
            outside.remove(&a.producer(u));
        }
    }
    for (&layer, why) in stars.outside.iter().chain(&dag.outside) {
        outside.entry(layer).or_insert_with(|| why.clone());
    }
    for &k in &degenerate {
        for &u in &a.groups[k] {
            outside
                .entry(a.producer(u))
                .or_insert_with(|| "its in-edge weights or out-edges are all zero".into());
        }
    }
    // Outside reasons only for layers whose units are rescalings somewhere outside.
    let covered: HashSet<usize> = blocks
        .iter()
        .chain(&star_blocks)
        .flat_map(|b| b.units.iter().flat_map(|p| p.units.iter()))
        .filter_map(|&u| a.group_of[u])
        .collect();
    outside.retain(|&layer, _| {
        a.units_of(layer)
            .iter()
            .any(|&u| a.group_of[u].is_some_and(|k| !covered.contains(&k)))
    });
    blocks.extend(star_blocks);
    Conversion {
        basis: Basis { blocks, outside },
        analysis,
        canon,
        stats,
    }
}

impl Conversion {
    /// The plan report of this conversion of `g` (named `model` in the report).
    pub fn report(&self, model: &str, g: &Graph) -> report::PlanReport {
        report::PlanReport::new(
            model,
            g,
            &self.canon,
            &self.analysis,
            &self.basis,
            &self.stats,
        )
    }
}

/// A chain block of the plan as a basis block, on the normalized weights `g`.
fn chain_block(g: &Graph, a: &Analysis, b: &EcBlock) -> basis::Block {
    use basis::{LayerPlan, Region, TensorRole, UnitPlan};
    let sk = skeleton::skeleton(g, a, b);
    let mut fixed: Vec<Vec<usize>> = vec![vec![]; b.layers.len()];
    for (l, ds) in b.designated.iter().enumerate() {
        for d in ds {
            fixed[if d.incoming { l } else { l + 1 }].push(d.weight.index);
        }
    }
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
            let by_unit = |l: usize| sk.chains[l].iter().map(|&c| c as u32).collect::<Vec<_>>();
            let mut weight = match region {
                Region::Before => TensorRole::new(&geo.weight, &geo.dims, geo.out_axis, by_unit(l)),
                Region::Free => TensorRole::new(&geo.weight, &geo.dims, geo.out_axis, vec![]),
                Region::After => {
                    let per = geo.in_channels * geo.in_block;
                    let len = geo.dims[geo.in_axis];
                    let chain = (0..len)
                        .map(|pos| sk.chains[l - 1][(pos % per) / geo.in_block] as u32)
                        .collect();
                    TensorRole::new(&geo.weight, &geo.dims, geo.in_axis, chain)
                }
            };
            weight.fixed = fixed[l].clone();
            if region == Region::Free {
                weight.v =
                    sk.v.iter()
                        .enumerate()
                        .map(|(c, &i)| (c as u32, i))
                        .collect();
                weight.fixed.extend(sk.v.iter().copied());
            }
            weight.fixed.sort_unstable();
            let bias = geo.bias.as_ref().map(|name| {
                let chain = if region == Region::Before {
                    by_unit(l)
                } else {
                    vec![]
                };
                TensorRole::new(name, &[geo.outputs()], 0, chain)
            });
            LayerPlan {
                node: b.layers[l],
                label: g.node_label(b.layers[l]),
                region,
                weight,
                bias,
            }
        })
        .collect();
    let units = b
        .designated
        .iter()
        .enumerate()
        .flat_map(|(l, ds)| {
            let chains = &sk.chains[l];
            ds.iter().enumerate().map(move |(j, d)| UnitPlan {
                units: vec![d.unit],
                chain: chains[j] as u32,
                incoming: d.incoming,
                designated: d.weight.clone(),
            })
        })
        .collect();
    let free_w = &sk.geo[b.free].weight;
    let mut widths = vec![sk.geo[0].dims[sk.geo[0].in_axis]];
    widths.extend(b.hidden.iter().map(Vec::len));
    widths.push(sk.geo.last().expect("layers").outputs());
    basis::Block {
        kind: basis::BlockKind::Chain {
            layers: b.layers.clone(),
            widths,
            free: b.free,
            rotations: b.rotations.clone(),
        },
        v: sk
            .v
            .iter()
            .map(|&i| Scalar {
                param: free_w.clone(),
                index: i,
            })
            .collect(),
        monomials: basis::Block::simple_monomials(sk.v.len()),
        layers,
        units,
    }
}

/// Build the plan: blocks, free layers and designated weights.
pub(crate) fn plan(g: &Graph, a: &Analysis) -> EcPlan {
    plan_with(g, a, |_, _| None)
}

/// [`plan`] with chains cut where `cut(layer, consumer)` gives a reason: `layer`'s units
/// are then outputs of one block and inputs of the next, in no block themselves.
pub(crate) fn plan_with(
    g: &Graph,
    a: &Analysis,
    cut: impl Fn(usize, usize) -> Option<String>,
) -> EcPlan {
    let mut by_layer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for u in 0..a.unit_count() {
        by_layer.entry(a.producer(u)).or_default().push(u);
    }
    let mut outside = BTreeMap::new();
    // next[A] = B when every unit of A is block-eligible, all absorbed by B, and B reads
    // nothing else.
    let mut next: HashMap<usize, usize> = HashMap::new();
    for (&layer, units) in &by_layer {
        if grouped(g, layer) {
            outside.insert(layer, "grouped convolution".to_string());
            continue;
        }
        if g.layer(layer).is_some_and(|l| l.is_diagonal()) {
            // A training-mode BatchNormalization: its units can only be stars.
            continue;
        }
        if let Some(why) = units.iter().find_map(|&u| unit_obstacle(g, a, u)) {
            outside.insert(layer, why);
            continue;
        }
        let b = a.consumers(units[0])[0];
        let same = units.iter().all(|&u| a.consumers(u)[0] == b);
        let reads: usize = (0..a.unit_count())
            .filter(|&x| a.consumers(x).contains(&b))
            .count();
        let consumer_edit = a.out_edits(units[0]).next();
        let width_ok = consumer_edit.is_some_and(|e| e.channels == units.len());
        if !same || reads != units.len() || grouped(g, b) || !width_ok {
            outside.insert(
                layer,
                format!("its consumer {} reads other units too", g.node_label(b)),
            );
            continue;
        }
        if let Some(why) = cut(layer, b) {
            outside.insert(layer, why);
            continue;
        }
        next.insert(layer, b);
    }
    let has_prev: std::collections::HashSet<usize> = next.values().copied().collect();
    let mut blocks = vec![];
    let mut starts: Vec<usize> = next
        .keys()
        .copied()
        .filter(|l| !has_prev.contains(l))
        .collect();
    starts.sort_unstable();
    for start in starts {
        let mut layers = vec![start];
        while let Some(&n) = next.get(layers.last().expect("nonempty")) {
            layers.push(n);
        }
        let k = layers.len() - 1;
        // The last layer's outputs must not be rescalable units outside the block, or the
        // out-edge normalizations would depend on them.
        let last_rescalable = by_layer
            .get(&layers[k])
            .is_some_and(|us| us.iter().any(|&u| a.blocked(u).is_none()));
        let widths: Vec<usize> = layers[..k].iter().map(|l| by_layer[l].len()).collect();
        for (first, last, free) in pieces(&widths, last_rescalable) {
            let piece = layers[first..=last].to_vec();
            let hidden: Vec<Vec<usize>> = piece[..piece.len() - 1]
                .iter()
                .map(|l| by_layer[l].clone())
                .collect();
            let params = piece
                .iter()
                .flat_map(|&l| layer_params(g, l))
                .map(|p| g.params[p].len())
                .sum();
            for l in &piece {
                outside.remove(l);
            }
            let n = piece.len();
            blocks.push(EcBlock {
                layers: piece,
                hidden,
                free: free - first,
                designated: vec![],
                rotations: vec![0; n],
                params,
            });
        }
        for l in &layers {
            outside.entry(*l).or_insert_with(|| {
                "lies between EC blocks: the chain's widths are not unimodal there".into()
            });
        }
        for b in &blocks {
            for l in &b.layers {
                outside.remove(l);
            }
        }
    }
    EcPlan { blocks, outside }
}

/// Split a chain with hidden widths `w` (w[l] = width of the output of weight layer l, for
/// l < k = w.len()) into EC blocks whose skeleton chains do not overlap: widths must not
/// decrease before the free layer and not increase after it (spec §3 with one chain per
/// unit). Returns (first layer, last layer, free layer) triples, weight-layer indices. A
/// block whose outputs are rescalable units must keep its free layer last.
pub(crate) fn pieces(w: &[usize], last_rescalable: bool) -> Vec<(usize, usize, usize)> {
    let k = w.len();
    let unimodal = |v: &[usize]| {
        let peak = v
            .iter()
            .position(|&x| x == *v.iter().max().expect("nonempty"))
            .expect("max");
        v[..=peak].windows(2).all(|p| p[0] <= p[1]) && v[peak..].windows(2).all(|p| p[0] >= p[1])
    };
    let mut out = vec![];
    let mut a = 0;
    while a < k {
        if !last_rescalable && unimodal(&w[a..]) {
            let peak = a + w[a..]
                .iter()
                .position(|&x| x == *w[a..].iter().max().expect("nonempty"))
                .expect("max");
            out.push((a, k, peak));
            break;
        }
        let mut t = a;
        while t + 1 < k && w[t + 1] >= w[t] {
            t += 1;
        }
        if t + 1 == k {
            out.push((a, k, k));
            break;
        }
        // Split at hidden layer t: it becomes the outputs of this block (free layer last)
        // and the inputs of the next.
        if t > a {
            out.push((a, t, t));
        }
        a = t + 1;
    }
    out
}

/// Flat index into a layer's weight for output channel `o` and input position `pos` along
/// `in_axis`; other axes (conv taps) at their centre.
fn weight_index(dims: &[usize], out_axis: usize, in_axis: usize, o: usize, pos: usize) -> usize {
    let mut idx = 0;
    for (ax, &d) in dims.iter().enumerate() {
        let i = if ax == out_axis {
            o
        } else if ax == in_axis {
            pos
        } else {
            d / 2
        };
        idx = idx * d + i;
    }
    idx
}

/// The centre position of channel `channel` (of `channels`, each `block` positions wide,
/// repeated along an axis of length `len`).
fn centre(channels: usize, block: usize, channel: usize, len: usize) -> usize {
    let per = channels * block;
    (len / per / 2) * per + channel * block + block / 2
}

/// The designated weights of hidden layer `l` of a block, chosen on the current weights of
/// `g`: the rotation of the "mod" pattern whose smallest weight, relative to the largest of
/// its unit's row (in-edges) or column (out-edges), is largest. Relative magnitudes make
/// the choice the same for every model of a class, once the layers it depends on are
/// normalized: that is what keeps gauge normalization canonical.
pub(crate) fn designate(
    g: &Graph,
    a: &Analysis,
    b: &EcBlock,
    l: usize,
) -> (usize, Vec<Designated>) {
    let incoming = l < b.free;
    let layer = if incoming { l } else { l + 1 };
    let view = g.layer(b.layers[layer]).expect("block layers are layers");
    let w = view.weight.to_string();
    let param = &g.params[&w];
    let dims = &param.dims;
    let (oa, ia) = (
        view.out_axis,
        view.in_axis.expect("block layers have inputs"),
    );
    let hid = &b.hidden[l];
    // Each unit's own slice of the layer (its row, or its column): the reference magnitude.
    let reference: Vec<f32> = hid
        .iter()
        .map(|&u| {
            let e = if incoming {
                a.in_edits(u).find(|e| e.param == w)
            } else {
                a.out_edit(u, &w)
            }
            .expect("unit edit");
            edit_runs(dims, e)
                .into_iter()
                .flatten()
                .map(|i| param.get_f32(i).abs())
                .fold(0.0, f32::max)
        })
        .collect();
    let pairs = |r: usize| -> Vec<Designated> {
        hid.iter()
            .enumerate()
            .map(|(j, &u)| {
                let index = if incoming {
                    let pos = if l == 0 {
                        (j + r) % dims[ia]
                    } else {
                        let prev = &b.hidden[l - 1];
                        let i = prev[(j + r) % prev.len()];
                        let e = a.out_edit(i, &w).expect("consumer edit");
                        centre(e.channels, e.block, e.channel, dims[e.axis])
                    };
                    weight_index(dims, oa, ia, j, pos)
                } else {
                    let e = a.out_edit(u, &w).expect("consumer edit");
                    weight_index(
                        dims,
                        oa,
                        e.axis,
                        (j + r) % dims[oa],
                        centre(e.channels, e.block, e.channel, dims[e.axis]),
                    )
                };
                Designated {
                    unit: u,
                    incoming,
                    weight: Scalar {
                        param: w.clone(),
                        index,
                    },
                }
            })
            .collect()
    };
    let score = |ds: &[Designated]| {
        ds.iter()
            .zip(&reference)
            .map(|(d, &m)| {
                if m > 0.0 {
                    param.get_f32(d.weight.index).abs() / m
                } else {
                    0.0
                }
            })
            .fold(f32::INFINITY, f32::min)
    };
    let mut best = (0, pairs(0));
    let mut best_score = score(&best.1);
    for r in 1..64usize.min(dims[if incoming { ia } else { oa }]) {
        let p = pairs(r);
        let s = score(&p);
        if s > best_score {
            best = (r, p);
            best_score = s;
        }
    }
    best
}
