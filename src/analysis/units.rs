//! The structural walk: follows every unit (an output channel of a Gemm, MatMul, Conv or
//! ConvTranspose)
//! through the graph, asking the [`Oracle`] at each op what happens to a scale on it, and
//! collects for each unit the parameter slices a rescaling multiplies (its incoming
//! weights, bias, statistics it passes through) and divides (its outgoing weights), the
//! units it is tied to, or the op that blocks it.

use super::query::{Layout, Oracle, Outcome, Verdict, Wrap};
use crate::ir::{Graph, Op};
use std::collections::HashMap;
use std::rc::Rc;

/// How a tensor's channels lie along one axis: channel c holds the positions
/// `o*C*block + c*block + i` (o < outer, i < block) of `axis`.
#[derive(Debug, Clone)]
struct ChanMap {
    axis: usize,
    outer: usize,
    block: usize,
    /// The unit of each channel (None: a channel no unit scales).
    slots: Vec<Option<usize>>,
}

impl ChanMap {
    fn plain(&self) -> bool {
        self.outer == 1 && self.block == 1
    }
}

/// One parameter slice that a unit's rescaling by c multiplies by c^exponent: the
/// positions along `axis` that belong to `channel` under the (channels, block) pattern,
/// within `rows` of axis 0 if given (grouped convolutions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub param: String,
    pub axis: usize,
    pub channels: usize,
    pub block: usize,
    pub channel: usize,
    pub rows: Option<(usize, usize)>,
    pub exponent: i32,
}

/// Why a unit cannot be rescaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub node: usize,
    pub why: String,
}

#[derive(Debug, Clone)]
pub struct Unit {
    /// The producing layer (node index) and its output channel.
    pub producer: usize,
    pub channel: usize,
    /// The training-mode BatchNormalization where its scale vanishes (spec §11.1): with
    /// no consumer layers, the unit is a radial direction rather than a rescaling.
    pub ends_at: Option<usize>,
    pub edits: Vec<Edit>,
    /// Nodes the unit's scale passed through, in order.
    pub via: Vec<usize>,
    /// Layers that absorbed it.
    pub consumers: Vec<usize>,
    /// Concatenations it went through, with the channel it landed on there.
    pub placed: Vec<(usize, usize)>,
    pub blocked: Option<Block>,
    /// The verdicts along the way (node, verdict), for `--explain`.
    pub steps: Vec<(usize, Rc<Verdict>)>,
}

/// A BatchNormalization right after a layer: in training mode each of the layer's output
/// channels is scale-invariant on its own (spec §8).
#[derive(Debug, Clone)]
pub struct ScaleInvariant {
    pub producer: usize,
    pub batch_norm: usize,
    pub channels: usize,
    pub verdict: Rc<Verdict>,
}

/// What the walk finds.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    pub units: Vec<Unit>,
    /// Union-find parent links over units (ties).
    parent: Vec<usize>,
    pub scale_invariant: Vec<ScaleInvariant>,
}

impl Walk {
    pub fn find(&self, mut u: usize) -> usize {
        while self.parent[u] != u {
            u = self.parent[u];
        }
        u
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi] = lo;
        }
    }
    fn block(&mut self, u: usize, node: usize, why: &str) {
        if self.units[u].blocked.is_none() {
            self.units[u].blocked = Some(Block {
                node,
                why: why.to_string(),
            });
        }
    }
    fn step(&mut self, u: usize, node: usize, v: &Rc<Verdict>) {
        let unit = &mut self.units[u];
        if unit.via.last() != Some(&node) {
            unit.via.push(node);
            unit.steps.push((node, v.clone()));
        }
    }
}

/// Channel layout after a reshape from `from` dims to `to` dims, if the channel positions
/// stay one (outer, C, block) pattern along some axis. Axis 0 (the batch) must stay.
fn reshape_map(m: &ChanMap, from: &[usize], to: &[usize]) -> Option<(usize, usize, usize)> {
    if from.is_empty() || to.is_empty() || from[0] != to[0] || m.axis == 0 {
        return None;
    }
    let c = m.slots.len();
    // Per sample, channel c holds flat positions ((p*outer + o)*C + c)*inner + i.
    let inner: usize = m.block * from[m.axis + 1..].iter().product::<usize>();
    for j in 1..to.len() {
        let suffix: usize = to[j + 1..].iter().product();
        let span = suffix * to[j];
        if suffix <= inner
            && inner.is_multiple_of(suffix)
            && span >= inner * c
            && span.is_multiple_of(inner * c)
        {
            return Some((j, span / (inner * c), inner / suffix));
        }
    }
    None
}

fn leaf_of(v: f32) -> &'static str {
    if v == 0.0 {
        "0"
    } else if v == f32::INFINITY {
        "inf"
    } else if v == f32::NEG_INFINITY {
        "-inf"
    } else {
        "k"
    }
}

/// The term of an op over rendered arguments.
fn term(op: &Op, a: &[String], mixing: bool) -> String {
    let un = |name: &str| format!("({name} {})", a[0]);
    let bias = |k: usize| a.get(k).cloned().unwrap_or_else(|| "none".into());
    match op {
        Op::Relu => un("relu"),
        Op::LeakyRelu { .. } => un("leaky-relu"),
        Op::PRelu => format!("(prelu {} {})", a[0], a[1]),
        Op::Clip { min, max } => format!("(clip {} {} {})", a[0], leaf_of(*min), leaf_of(*max)),
        Op::Sigmoid => un("sigmoid"),
        Op::Tanh => un("tanh"),
        Op::HardSigmoid { .. } => un("hard-sigmoid"),
        Op::HardSwish => un("hard-swish"),
        Op::Gelu { .. } => un("gelu"),
        Op::InstanceNorm { .. } => un("instance-norm"),
        Op::Softmax { .. } => un("softmax"),
        Op::LogSoftmax { .. } => un("log-softmax"),
        Op::Lrn { .. } => un("lrn"),
        Op::Gather { .. } => un("gather"),
        Op::ScatterNd { .. } => format!("(scatter-nd {} {})", a[0], a[1]),
        Op::MaxPool(_) => un("max-pool"),
        Op::AveragePool { .. } => un("average-pool"),
        Op::GlobalAveragePool => un("global-average-pool"),
        Op::GlobalMaxPool => un("global-max-pool"),
        Op::Dropout { .. } => un("dropout"),
        Op::Identity => un("identity"),
        _ if mixing => un("channel-mixing-reshape"),
        Op::Flatten { .. } => un("flatten"),
        Op::Reshape { .. } => un("reshape"),
        Op::Squeeze { .. } => un("squeeze"),
        Op::Unsqueeze { .. } => un("unsqueeze"),
        Op::Transpose { .. } => un("transpose"),
        // Off the channel axis (on it, `mixing` above): zeros, mirrored, nearest or wrapped
        // values scale with the input; another constant does not.
        Op::Pad {
            mode: crate::ir::PadMode::Constant(v),
            ..
        } if *v != 0.0 => un("pad-value"),
        Op::Pad { .. } => un("pad"),
        Op::Slice { .. } => un("slice"),
        // Outputs cropped outside the input take a constant: one other than 0 does not scale.
        Op::Resize(r) if r.roi.is_some() && r.extrapolation != 0.0 => un("resize-value"),
        Op::Resize(_) => un("resize"),
        Op::Binary { kind, .. } => {
            let k = format!("{kind:?}").to_lowercase();
            format!("({k} {} {})", a[0], a[1])
        }
        // Mean is Sum times 1/n: the same scale behaviour (a tie of its inputs).
        Op::Sum | Op::Mean | Op::Max | Op::Min => {
            let f = match op {
                Op::Max => "max",
                Op::Min => "min",
                _ => "add",
            };
            let mut t = a[a.len() - 1].clone();
            for x in a[..a.len() - 1].iter().rev() {
                t = format!("({f} {x} {t})");
            }
            t
        }
        Op::Gemm { trans_a: true, .. } => format!("(gemm-trans-a {} {} {})", a[0], a[1], bias(2)),
        Op::Gemm { trans_b: true, .. } => format!("(gemm {} {} {})", a[0], a[1], bias(2)),
        Op::Gemm { trans_b: false, .. } => format!("(gemm-n {} {} {})", a[0], a[1], bias(2)),
        Op::MatMul => format!("(matmul {} {})", a[0], a[1]),
        Op::Conv(c) => format!("(conv g{} {} {} {})", c.group, a[0], a[1], bias(2)),
        Op::ConvTranspose(c) => {
            let head = if c.group == 1 {
                "conv-transpose"
            } else {
                "conv-transpose-grouped"
            };
            format!("({head} {} {} {})", a[0], a[1], bias(2))
        }
        Op::BatchNorm { .. } => {
            format!("(batch-norm {} {} {} {} {})", a[0], a[1], a[2], a[3], a[4])
        }
        Op::Concat { .. } => unreachable!("concat terms are built by the walk"),
    }
}

/// How BatchNormalization is analysed: as the per-channel affine map it is at inference,
/// or with batch statistics, as in training (spec §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BnMode {
    #[default]
    Inference,
    Training,
}

pub fn walk(g: &Graph, oracle: &mut Oracle, mode: BnMode) -> Walk {
    let mut w = Walk::default();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.nodes {
        for i in n.data_inputs() {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut env: HashMap<String, ChanMap> = HashMap::new();
    for (ni, node) in g.nodes.iter().enumerate() {
        let ins = node.data_inputs();
        let scaled: Vec<bool> = ins.iter().map(|i| env.contains_key(i)).collect();
        let is_param = |i: usize| g.params.contains_key(&ins[i]);
        let arg = |i: usize, s: bool| {
            if s {
                format!("(scale s x{i})")
            } else if is_param(i) {
                format!("(param p{i})")
            } else {
                format!("x{i}")
            }
        };
        let bn_train = mode == BnMode::Training && matches!(node.op, Op::BatchNorm { .. });
        // A layer owns its weight: one read by two nodes stays a plain parameter.
        let layer = g
            .layer(ni)
            .filter(|l| uses[l.weight] == 1 && (!l.is_diagonal() || bn_train));

        // 1. Scales arriving at this node.
        if scaled.iter().any(|&s| s) {
            if let Op::Concat { axis } = &node.op {
                concat(g, ni, node, *axis, &scaled, &mut env, &mut w, oracle);
            } else if bn_train && scaled[0] && !scaled[1..].iter().any(|&s| s) {
                radial(ni, &ins[0], &env, &mut w, oracle);
            } else if let Some(l) = layer.filter(|_| scaled[0] && !scaled[1..].iter().any(|&s| s)) {
                let in_axis = l.in_axis.expect("diagonal layers are batch normalizations");
                absorb(g, ni, node, in_axis, &mut env, &mut w, oracle, &arg);
            } else {
                pass(g, ni, node, &scaled, &mut env, &mut w, oracle, &arg);
            }
        }

        // 2. A layer's output channels are new units.
        if let Some(l) = layer {
            let (w_out_axis, out_axis) = (l.out_axis, l.channel_axis);
            let wdims = &g.params[&ins[1]].dims;
            let c = wdims[w_out_axis];
            let (q, target) = if l.is_diagonal() {
                (
                    "(add (mul (batch-norm-train x0) (pscale s (param p1))) (pscale s (param p2)))"
                        .to_string(),
                    "(scale s (add (mul (batch-norm-train x0) (param p1)) (param p2)))".to_string(),
                )
            } else {
                layer_query(&node.op, ins.len())
            };
            let v = oracle.ask_equal(&q, &target);
            let bias_ok = ins
                .get(2)
                .is_none_or(|b| g.params.get(b).is_some_and(|p| p.len() == c));
            let first = w.units.len();
            for ch in 0..c {
                let id = w.units.len();
                w.parent.push(id);
                let mut edits = vec![Edit {
                    param: ins[1].clone(),
                    axis: w_out_axis,
                    channels: c,
                    block: 1,
                    channel: ch,
                    rows: None,
                    exponent: 1,
                }];
                if let Some(b) = ins.get(2) {
                    if bias_ok {
                        let bd = &g.params[b].dims;
                        edits.push(Edit {
                            param: b.clone(),
                            axis: bd.len().saturating_sub(1),
                            channels: c,
                            block: 1,
                            channel: ch,
                            rows: None,
                            exponent: 1,
                        });
                    }
                }
                w.units.push(Unit {
                    producer: ni,
                    channel: ch,
                    ends_at: None,
                    edits,
                    via: vec![ni],
                    consumers: vec![],
                    placed: vec![],
                    blocked: None,
                    steps: vec![(ni, v.clone())],
                });
                if matches!(v.outcome, Outcome::Block) {
                    w.block(id, ni, "the layer cannot emit a scale");
                } else if !bias_ok {
                    w.block(id, ni, "its bias is shared across channels");
                }
            }
            env.insert(
                node.outputs[0].clone(),
                ChanMap {
                    axis: out_axis,
                    outer: 1,
                    block: 1,
                    slots: (first..first + c).map(Some).collect(),
                },
            );
        }
    }
    // 3. Whatever reaches a graph output changes the model's output.
    for o in &g.outputs {
        if let Some(m) = env.get(&o.name) {
            for u in m.slots.iter().flatten() {
                let producer = w.units[*u].producer;
                w.block(
                    *u,
                    producer,
                    &format!("it reaches the graph output '{}'", o.name),
                );
            }
        }
    }
    // 4. BatchNormalization straight after a layer: scale invariance in training mode
    //    (reported in inference mode; in training mode the walk records it per unit).
    for (ni, node) in g.nodes.iter().enumerate() {
        if mode == BnMode::Training {
            break;
        }
        if let Op::BatchNorm { .. } = node.op {
            let x = &node.inputs[0];
            if let Some(p) = g.nodes[..ni].iter().position(|n| &n.outputs[0] == x) {
                if g.layer(p).is_some_and(|l| !l.is_diagonal()) {
                    let verdict = oracle.ask("(batch-norm-train (scale s x0))");
                    if matches!(verdict.outcome, Outcome::Absorb { .. }) {
                        w.scale_invariant.push(ScaleInvariant {
                            producer: p,
                            batch_norm: ni,
                            channels: g.shapes[x].dims[1],
                            verdict,
                        });
                    }
                }
            }
        }
    }
    // Ties block together: one blocked unit blocks its whole group.
    let mut group_block: HashMap<usize, Block> = HashMap::new();
    for u in 0..w.units.len() {
        if let Some(b) = &w.units[u].blocked {
            group_block.entry(w.find(u)).or_insert_with(|| b.clone());
        }
    }
    for u in 0..w.units.len() {
        if w.units[u].blocked.is_none() {
            if let Some(b) = group_block.get(&w.find(u)) {
                w.units[u].blocked = Some(Block {
                    node: b.node,
                    why: format!("tied to units that are blocked: {}", b.why),
                });
            }
        }
    }
    w
}

/// The query that asks whether a layer emits a scale when its incoming weights and bias
/// are multiplied, and the term it should equal.
fn layer_query(op: &Op, inputs: usize) -> (String, String) {
    let args = |wrap: bool| -> Vec<String> {
        (0..inputs)
            .map(|i| match (i, wrap) {
                (0, _) => "x0".to_string(),
                (_, true) => format!("(pscale s (param p{i}))"),
                (_, false) => format!("(param p{i})"),
            })
            .collect()
    };
    let q = term(op, &args(true), false).replace(" none)", " (pscale s none))");
    let target = format!("(scale s {})", term(op, &args(false), false));
    (q, target)
}

/// A training-mode BatchNormalization: the scale on each incoming channel vanishes (spec
/// §11.1), so the units that reach it end there.
fn radial(
    ni: usize,
    input: &str,
    env: &HashMap<String, ChanMap>,
    w: &mut Walk,
    oracle: &mut Oracle,
) {
    let v = oracle.ask("(batch-norm-train (scale s x0))");
    let m = &env[input];
    let ok = matches!(&v.outcome, Outcome::Absorb { wrapped } if wrapped.is_empty())
        && m.axis == 1
        && m.plain();
    for u in m.slots.iter().flatten() {
        w.step(*u, ni, &v);
        if ok {
            w.units[*u].ends_at.get_or_insert(ni);
        } else {
            w.block(*u, ni, &v.explanation);
        }
    }
}

/// A layer absorbs the scale on its input by dividing the weights that read each channel.
#[allow(clippy::too_many_arguments)]
fn absorb(
    g: &Graph,
    ni: usize,
    node: &crate::ir::Node,
    w_in_axis: usize,
    env: &mut HashMap<String, ChanMap>,
    w: &mut Walk,
    oracle: &mut Oracle,
    arg: &dyn Fn(usize, bool) -> String,
) {
    let ins = node.data_inputs();
    let m = env[&ins[0]].clone();
    let args: Vec<String> = (0..ins.len()).map(|i| arg(i, i == 0)).collect();
    let v = oracle.ask(&term(&node.op, &args, false));
    let x_rank = g.shapes[&ins[0]].rank();
    let conv = matches!(node.op, Op::Conv(_) | Op::ConvTranspose(_));
    let feature_axis = if conv { 1 } else { x_rank - 1 };
    let fits = m.axis == feature_axis && (m.plain() || !conv);
    for (c, slot) in m.slots.iter().enumerate() {
        let Some(u) = *slot else { continue };
        w.step(u, ni, &v);
        match (&v.outcome, fits) {
            (Outcome::Absorb { wrapped }, true)
                if wrapped == &[("p1".to_string(), Wrap::IScale)] =>
            {
                let edit = match &node.op {
                    Op::Conv(a) => {
                        let cg = m.slots.len() / a.group;
                        let mg = g.params[&ins[1]].dims[0] / a.group;
                        let gi = c / cg;
                        Edit {
                            param: ins[1].clone(),
                            axis: 1,
                            channels: cg,
                            block: 1,
                            channel: c % cg,
                            rows: Some((gi * mg, (gi + 1) * mg)),
                            exponent: -1,
                        }
                    }
                    _ => Edit {
                        param: ins[1].clone(),
                        axis: w_in_axis,
                        channels: m.slots.len(),
                        block: m.block,
                        channel: c,
                        rows: None,
                        exponent: -1,
                    },
                };
                w.units[u].edits.push(edit);
                w.units[u].consumers.push(ni);
            }
            (Outcome::Absorb { .. }, false) => w.block(
                u,
                ni,
                "its channel layout does not match the layer's input axis",
            ),
            _ => w.block(u, ni, &v.explanation),
        }
    }
}

/// Concatenation along the channel axis places each input's channels at its offset.
#[allow(clippy::too_many_arguments)]
fn concat(
    g: &Graph,
    ni: usize,
    node: &crate::ir::Node,
    axis: i64,
    scaled: &[bool],
    env: &mut HashMap<String, ChanMap>,
    w: &mut Walk,
    oracle: &mut Oracle,
) {
    let ins = node.data_inputs();
    let rank = g.shapes[&ins[0]].rank();
    let a = crate::ir::norm_axis(axis, rank).unwrap_or(0);
    let maps: Vec<Option<ChanMap>> = ins.iter().map(|i| env.get(i).cloned()).collect();
    let on_channels = maps.iter().flatten().all(|m| m.axis == a && m.plain());
    let v = if on_channels {
        oracle.ask("(concat x0 (scale s x1) x2)")
    } else {
        oracle.ask("(concat-other-axis (scale s x0) x1)")
    };
    let mut slots = vec![];
    for (k, i) in ins.iter().enumerate() {
        let n = g.shapes[i].dims[a];
        match &maps[k] {
            Some(m) if scaled[k] => {
                let offset = slots.len();
                for (c, s) in m.slots.iter().enumerate() {
                    let Some(s) = s else { continue };
                    w.units[*s].placed.push((ni, offset + c));
                    w.step(*s, ni, &v);
                    if !matches!(
                        v.outcome,
                        Outcome::Pass {
                            layout: Layout::Place,
                            ..
                        }
                    ) {
                        w.block(*s, ni, &v.explanation);
                    }
                }
                slots.extend(m.slots.iter().copied());
            }
            _ => slots.extend(std::iter::repeat_n(None, n)),
        }
    }
    if on_channels && matches!(v.outcome, Outcome::Pass { .. }) {
        env.insert(
            node.outputs[0].clone(),
            ChanMap {
                axis: a,
                outer: 1,
                block: 1,
                slots,
            },
        );
    }
}

/// Every other op: ask, then carry the channels to the output, tie, or block.
#[allow(clippy::too_many_arguments)]
fn pass(
    g: &Graph,
    ni: usize,
    node: &crate::ir::Node,
    scaled: &[bool],
    env: &mut HashMap<String, ChanMap>,
    w: &mut Walk,
    oracle: &mut Oracle,
    arg: &dyn Fn(usize, bool) -> String,
) {
    let ins = node.data_inputs();
    let out = &g.shapes[&node.outputs[0]];
    let first = scaled.iter().position(|&s| s).expect("a scaled input");
    let m = env[&ins[first]].clone();
    let in_shape = &g.shapes[&ins[first]];
    let out_rank = out.rank();
    // Where the channels land in the output, for ops that move them.
    let moved: Option<(usize, usize, usize)> = match &node.op {
        Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
            reshape_map(&m, &in_shape.dims, &out.dims)
        }
        Op::Transpose { perm } => perm
            .iter()
            .position(|&p| p == m.axis)
            .map(|j| (j, m.outer, m.block)),
        // Padding or slicing the channel axis changes which position holds which channel.
        Op::Pad { pads, .. } => {
            let r = in_shape.rank();
            (pads[m.axis] == 0 && pads[m.axis + r] == 0).then_some((m.axis, m.outer, m.block))
        }
        Op::Slice { axes, .. } => (!axes.contains(&m.axis)).then_some((m.axis, m.outer, m.block)),
        // Resizing the channel axis mixes channels.
        Op::Resize(r) => (r.out[m.axis] == in_shape.dims[m.axis] && r.scales[m.axis] == 1.0)
            .then_some((m.axis, m.outer, m.block)),
        _ => {
            // Broadcasting ops keep the axis, shifted by the rank difference; an op that
            // drops axes (a MatMul with a 1-D operand) loses the channel layout.
            out_rank
                .checked_sub(in_shape.rank())
                .map(|shift| (m.axis + shift, m.outer, m.block))
        }
    };
    // Scaled inputs of a multi-input op must agree on the channel layout.
    let layouts_agree = ins
        .iter()
        .enumerate()
        .filter(|(k, _)| scaled[*k])
        .all(|(_, i)| {
            // Compare axes aligned from the right, as broadcasting aligns them.
            let o = &env[i];
            let from_right = |axis: usize, rank: usize| rank as isize - axis as isize;
            from_right(o.axis, g.shapes[i].rank()) == from_right(m.axis, in_shape.rank())
                && o.outer == m.outer
                && o.block == m.block
                && o.slots.len() == m.slots.len()
        });
    let args: Vec<String> = (0..ins.len()).map(|i| arg(i, scaled[i])).collect();
    let v = oracle.ask(&term(&node.op, &args, moved.is_none()));
    let mut blocked_why: Option<String> = match (&v.outcome, layouts_agree) {
        (Outcome::Pass { .. }, true) => None,
        (Outcome::Pass { .. }, false) => {
            Some("its scaled inputs lay their channels out differently".into())
        }
        _ => Some(v.explanation.clone()),
    };
    // Parameters that come out wrapped: the rescaled model multiplies (`unscale` in the
    // result) or divides (`pscale`) their per-channel slices along the channel axis.
    let mut edits: Vec<(String, usize, i32)> = vec![];
    if let Outcome::Pass { wrapped, .. } = &v.outcome {
        for (p, wrap) in wrapped {
            let k: usize = p
                .trim_start_matches('p')
                .parse()
                .expect("query leaves are pK");
            let name = &ins[k];
            let dims = &g.params[name].dims;
            let exponent = match wrap {
                Wrap::Unscale => 1,
                Wrap::PScale => -1,
                Wrap::IScale => {
                    blocked_why = Some(format!(
                        "the rules move the scale into the input side of '{name}' here"
                    ));
                    continue;
                }
            };
            let (axis, _, _) = moved.unwrap_or((m.axis, 1, 1));
            // BatchNormalization's statistics are per channel of axis 1; other operands
            // broadcast from the right.
            let pa = if matches!(node.op, Op::BatchNorm { .. }) {
                (axis == 1 && m.plain()).then_some(0)
            } else {
                (axis + dims.len()).checked_sub(out_rank)
            };
            match pa {
                Some(pa) if dims[pa] == m.outer * m.slots.len() * m.block => {
                    edits.push((name.clone(), pa, exponent))
                }
                _ => blocked_why = Some(format!("parameter '{name}' is shared across channels")),
            }
        }
    }
    let (axis, outer, block) = moved.unwrap_or((m.axis, m.outer, m.block));
    let mut slots = m.slots.clone();
    for (k, i) in ins.iter().enumerate() {
        if !scaled[k] {
            continue;
        }
        let o = env[i].clone();
        for (c, s) in o.slots.iter().enumerate() {
            let Some(u) = *s else { continue };
            w.step(u, ni, &v);
            if let Some(why) = &blocked_why {
                w.block(u, ni, why);
                continue;
            }
            if k == first {
                for (p, pa, exponent) in &edits {
                    w.units[u].edits.push(Edit {
                        param: p.clone(),
                        axis: *pa,
                        channels: m.slots.len(),
                        block: m.block,
                        channel: c,
                        rows: None,
                        exponent: *exponent,
                    });
                }
            } else if layouts_agree {
                match slots[c] {
                    Some(t) => w.union(t, u),
                    None => slots[c] = Some(u),
                }
            }
        }
    }
    // A channel scaled on one side of a tie but not on the other is stuck.
    if scaled.iter().filter(|&&s| s).count() > 1 && blocked_why.is_none() {
        for c in 0..slots.len() {
            let present = ins
                .iter()
                .enumerate()
                .filter(|(k, _)| scaled[*k])
                .filter(|(_, i)| env[*i].slots[c].is_some())
                .count();
            let total = scaled.iter().filter(|&&s| s).count();
            if present != total {
                let units: Vec<usize> = ins
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| scaled[*k])
                    .filter_map(|(_, i)| env[i].slots[c])
                    .collect();
                for u in units {
                    w.block(u, ni, "it is added to a channel that no unit scales");
                }
            }
        }
    }
    if blocked_why.is_none() {
        env.insert(
            node.outputs[0].clone(),
            ChanMap {
                axis,
                outer,
                block,
                slots,
            },
        );
    }
}
