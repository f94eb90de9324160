//! The reference implementation's heuristic (spec §11, last paragraph; optimizer
//! `gsgd-ref`, docs/gsgd-ref.md): the blocks the public G-SGD code (MSRA-COLT/gsgd) trains
//! on a network with BatchNormalization, found by ecc's chain analysis instead of by hand.
//!
//! The reference applies the G-SGD formulas to the conv weights across BN layers as if the
//! network were conv -> ReLU -> conv, and trains everything else (the first conv, the
//! classifier, shortcuts, BN's gamma and beta) with plain SGD. Its hand-written block
//! lists are, for the CIFAR PlainNet, one chain per stage of that stage's convs, and for the
//! ResNet, the two convs of each basic block. Here: the chain blocks (spec §3) of the model
//! with every BatchNormalization read as identity, cut
//! - after a convolution that reads a graph input (the stem),
//! - before a strided convolution (a stage's first conv starts a new chain),
//! - between a convolution and a layer that is not one (the classifier).
//!
//! On ecc's `plain:` and `resnet:` builders this gives exactly the reference's lists (tested
//! in tests/gsgd_ref.rs); on an MLP it cuts nothing (the reference's MLP code rescales every
//! hidden layer). The blocks are not blocks of the real model's class space: a training-mode
//! BN makes its producer's rows radial (degree 0), so the step is not a function of the
//! class (tests/gsgd_ref.rs shows a rescaled equivalent network stepping elsewhere).

use super::{chain_block, normalize, plan_with, Basis};
use crate::analysis::{analyze_in, BnMode, RuleSet};
use crate::ir::{Graph, Op};
use std::collections::HashSet;

/// `g` with every BatchNormalization replaced by an Identity of its input (node indices and
/// parameter names unchanged; BN's parameters are no longer read).
pub fn bn_as_identity(g: &Graph) -> Graph {
    let mut view = g.clone();
    for n in &mut view.nodes {
        if matches!(n.op, Op::BatchNorm { .. }) {
            n.op = Op::Identity;
            n.inputs.truncate(1);
            n.outputs.truncate(1);
        }
    }
    view
}

/// Why the reference's block structure does not link `layer` into its consumer `next`, or
/// None when it does.
fn cut(g: &Graph, layer: usize, next: usize) -> Option<String> {
    let conv = |n: usize| matches!(g.nodes[n].op, Op::Conv(_));
    let inputs: HashSet<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
    if conv(layer) && inputs.contains(g.nodes[layer].inputs[0].as_str()) {
        return Some("the reference trains the first convolution by SGD".into());
    }
    if conv(layer) && !conv(next) {
        return Some(format!(
            "the reference's blocks end before {}, not a convolution",
            g.node_label(next)
        ));
    }
    match &g.nodes[next].op {
        Op::Conv(c) if c.strides.iter().any(|&s| s > 1) => Some(format!(
            "the reference's blocks start at {}, a strided convolution",
            g.node_label(next)
        )),
        _ => None,
    }
}

/// The reference's blocks of `g` (see the module doc), with ecc's skeleton (designated
/// weights and rotations) chosen on them. The parameter names are `g`'s; every tensor not
/// in a block is left to SGD.
pub fn basis(g: &Graph) -> Basis {
    let mut view = bn_as_identity(g);
    // Every weight 1: the skeleton's rotations are then all equal in [`normalize`]'s
    // choice, which keeps the first, r = 0, the reference's pattern (its `generate_eye_cnn`:
    // (o, o mod in) or (i mod out, i) at the centre tap); the gauge leaves it unchanged.
    for p in view.params.values_mut() {
        if let crate::ir::TensorData::F32(v) = &mut p.data {
            v.fill(1.0);
        }
    }
    let a = analyze_in(&view, &RuleSet::default_rules(), BnMode::Training);
    let mut plan = plan_with(&view, &a, |l, n| cut(&view, l, n));
    // The reference's free layer: the first of the widest hidden layers (its `s_idx`),
    // also where the block's outputs are rescalable units (ecc's canonical form would put
    // it last there; no canonical form is used here).
    for b in &mut plan.blocks {
        let widest = b.hidden.iter().map(Vec::len).max().unwrap_or(0);
        b.free = b.hidden.iter().position(|h| h.len() == widest).unwrap_or(0);
    }
    let in_blocks: HashSet<usize> = plan
        .blocks
        .iter()
        .flat_map(|b| b.hidden.iter().flatten())
        .filter_map(|&u| a.group_of[u])
        .collect();
    // Only the blocks' units get a gauge (the designated weights are chosen on it); the
    // canonical form itself is not used: it is not equivalent to `g` through a BN.
    let skip: HashSet<usize> = (0..a.groups.len())
        .filter(|k| !in_blocks.contains(k))
        .collect();
    let (canon, _) = normalize(&view, &a, &mut plan, &skip);
    let blocks = plan
        .blocks
        .iter()
        .map(|b| chain_block(&canon, &a, b))
        .collect();
    Basis {
        blocks,
        outside: plan.outside,
    }
}
