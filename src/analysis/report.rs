//! The analysis report: JSON for machines, a table for people, and `--explain`. Units are
//! compacted into channel ranges that behave alike, so a report fits in a terminal.

use super::Analysis;
use crate::error::{Error, Result};
use crate::inspect::group_digits;
use crate::ir::Graph;
use serde::Serialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    pub tensor: String,
    pub producer: String,
    /// Half-open channel range [start, end).
    pub channels: [usize; 2],
}

/// `count` independent rescalings that look alike: channel ranges of the same tensors.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRange {
    pub count: usize,
    /// More than one unit per rescaling (a residual stream, units tied by a sum).
    pub tied: bool,
    pub members: Vec<Member>,
    /// Parameters multiplied by c (incoming weights, biases, statistics passed through).
    pub producer_params: Vec<String>,
    /// Parameters divided by c (outgoing weights).
    pub consumer_params: Vec<String>,
    /// Op types the scale passes through, producer to consumers.
    pub path: Vec<String>,
    /// Where the channels land in the concatenations they go through: `tensor[start..end]`.
    pub placed: Vec<String>,
    /// (concat output, first channel) behind `placed`, filled in once `count` is known.
    #[serde(skip)]
    placed_at: Vec<(String, usize)>,
    pub consumers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockedRange {
    pub tensor: String,
    pub producer: String,
    pub channels: [usize; 2],
    pub node: String,
    pub op: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantRange {
    pub tensor: String,
    pub producer: String,
    pub channels: [usize; 2],
    pub batch_norm: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    /// How BatchNormalization was analysed: "inference" or "training" (spec §11).
    pub batch_norm: &'static str,
    /// m: trainable scalars.
    pub params: usize,
    /// H: independent rescalings after ties.
    pub rescalings: usize,
    /// m - H, less the radial directions and redundant biases (training mode, spec §11).
    pub class_dim: usize,
    /// Radial directions: rows before a training-mode BatchNormalization (spec §11.1).
    pub radial: usize,
    /// Biases right before a training-mode BatchNormalization (zero gradient).
    pub redundant_biases: usize,
    pub units: usize,
    pub blocked_units: usize,
    pub groups: Vec<GroupRange>,
    pub blocked: Vec<BlockedRange>,
    pub scale_invariant: Vec<InvariantRange>,
    pub rules: usize,
    pub queries: usize,
}

/// A group's members as (producer node, channel offset from the group's first channel).
type Signature = Vec<(usize, usize)>;

fn names(g: &Graph, set: impl IntoIterator<Item = usize>) -> Vec<String> {
    set.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|n| g.node_label(n))
        .collect()
}

impl Report {
    pub fn new(model: &str, g: &Graph, a: &Analysis) -> Self {
        let units = &a.walk.units;
        let tensor = |u: usize| g.nodes[units[u].producer].outputs[0].clone();
        // Groups: signature = members as (producer, channel offset from the first).
        let mut sigs: Vec<(Signature, usize, usize)> = a
            .groups
            .iter()
            .enumerate()
            .map(|(k, members)| {
                let mut m: Vec<(usize, usize)> = members
                    .iter()
                    .map(|&u| (units[u].producer, units[u].channel))
                    .collect();
                m.sort_unstable();
                let base = m[0].1;
                (
                    m.iter().map(|&(p, c)| (p, c.wrapping_sub(base))).collect(),
                    base,
                    k,
                )
            })
            .collect();
        sigs.sort();
        let mut groups: Vec<GroupRange> = vec![];
        let mut last: Option<(Signature, usize)> = None;
        for (sig, base, k) in sigs {
            if let (Some((ls, lb)), Some(r)) = (&last, groups.last_mut()) {
                if *ls == sig && *lb + 1 == base {
                    r.count += 1;
                    for (m, &(_, off)) in r.members.iter_mut().zip(&sig) {
                        m.channels[1] = base.wrapping_add(off) + 1;
                    }
                    last = Some((sig, base));
                    continue;
                }
            }
            let members = &a.groups[k];
            let edits = members.iter().flat_map(|&u| units[u].edits.iter());
            let (mut up, mut down) = (BTreeSet::new(), BTreeSet::new());
            for e in edits {
                if e.exponent > 0 {
                    up.insert(e.param.clone());
                } else {
                    down.insert(e.param.clone());
                }
            }
            let via: BTreeSet<usize> = members
                .iter()
                .flat_map(|&u| units[u].via.iter().copied())
                .collect();
            let mut path: Vec<String> = vec![];
            for n in via {
                let op = g.nodes[n].op.onnx_name().to_string();
                if path.last() != Some(&op) {
                    path.push(op);
                }
            }
            groups.push(GroupRange {
                count: 1,
                tied: members.len() > 1,
                members: sig
                    .iter()
                    .map(|&(p, off)| Member {
                        tensor: g.nodes[p].outputs[0].clone(),
                        producer: g.node_label(p),
                        channels: [base.wrapping_add(off), base.wrapping_add(off) + 1],
                    })
                    .collect(),
                producer_params: up.into_iter().collect(),
                consumer_params: down.into_iter().collect(),
                path,
                placed: vec![],
                placed_at: units[members[0]]
                    .placed
                    .iter()
                    .map(|&(n, pos)| (g.nodes[n].outputs[0].clone(), pos))
                    .collect(),
                consumers: names(
                    g,
                    members
                        .iter()
                        .flat_map(|&u| units[u].consumers.iter().copied()),
                ),
            });
            last = Some((sig, base));
        }
        for r in &mut groups {
            r.placed = r
                .placed_at
                .iter()
                .map(|(t, start)| format!("{t}[{start}..{}]", start + r.count))
                .collect();
        }
        // Blocked units, by producer and channel, merged when they block alike.
        let mut blocked: Vec<BlockedRange> = vec![];
        let mut order: Vec<usize> = (0..units.len())
            .filter(|&u| units[u].blocked.is_some())
            .collect();
        order.sort_by_key(|&u| (units[u].producer, units[u].channel));
        for u in order {
            let b = units[u].blocked.as_ref().expect("blocked");
            let (node, op) = (
                g.node_label(b.node),
                g.nodes[b.node].op.onnx_name().to_string(),
            );
            if let Some(r) = blocked.last_mut() {
                if r.producer == g.node_label(units[u].producer)
                    && r.channels[1] == units[u].channel
                    && r.node == node
                    && r.reason == b.why
                {
                    r.channels[1] += 1;
                    continue;
                }
            }
            blocked.push(BlockedRange {
                tensor: tensor(u),
                producer: g.node_label(units[u].producer),
                channels: [units[u].channel, units[u].channel + 1],
                node,
                op,
                reason: b.why.clone(),
            });
        }
        let mut scale_invariant: Vec<InvariantRange> = a
            .walk
            .scale_invariant
            .iter()
            .map(|s| InvariantRange {
                tensor: g.nodes[s.producer].outputs[0].clone(),
                producer: g.node_label(s.producer),
                channels: [0, s.channels],
                batch_norm: g.node_label(s.batch_norm),
            })
            .collect();
        // Training mode: the radial units, as channel ranges per producer.
        let mut radial: Vec<usize> = a.radial.iter().flatten().copied().collect();
        radial.sort_by_key(|&u| (units[u].producer, units[u].channel));
        for u in radial {
            let bn = g.node_label(units[u].ends_at.expect("radial units end at a BN"));
            let producer = g.node_label(units[u].producer);
            match scale_invariant.last_mut() {
                Some(r)
                    if r.producer == producer
                        && r.channels[1] == units[u].channel
                        && r.batch_norm == bn =>
                {
                    r.channels[1] += 1
                }
                _ => scale_invariant.push(InvariantRange {
                    tensor: tensor(u),
                    producer,
                    channels: [units[u].channel, units[u].channel + 1],
                    batch_norm: bn,
                }),
            }
        }
        Report {
            model: model.to_string(),
            batch_norm: match a.mode {
                super::BnMode::Inference => "inference",
                super::BnMode::Training => "training",
            },
            params: a.params,
            rescalings: a.rescalings(),
            class_dim: a.class_dim(),
            radial: a.radial.len(),
            redundant_biases: a.redundant_biases,
            units: units.len(),
            blocked_units: units.iter().filter(|u| u.blocked.is_some()).count(),
            groups,
            blocked,
            scale_invariant,
            rules: a.rules,
            queries: a.queries,
        }
    }

    /// The table for people. `max_rows` limits each section (0: no limit).
    pub fn to_text(&self, max_rows: usize) -> String {
        let mut s = String::new();
        s += &format!("model        {}\n", self.model);
        s += &format!(
            "params (m)   {} trainable scalars\n",
            group_digits(self.params)
        );
        s += &format!(
            "rescalings   {} independent (H), from {} units ({} blocked)\n",
            group_digits(self.rescalings),
            group_digits(self.units),
            group_digits(self.blocked_units)
        );
        if self.batch_norm == "training" {
            s += &format!(
                "class dim    {} (m - H - radial {} - redundant biases {}; BatchNormalization in training mode)\n",
                group_digits(self.class_dim),
                group_digits(self.radial),
                group_digits(self.redundant_biases)
            );
        } else {
            s += &format!("class dim    {} (m - H)\n", group_digits(self.class_dim));
        }
        s += &format!(
            "rules        {} rules, {} distinct op queries\n",
            self.rules, self.queries
        );
        let limit = |n: usize| if max_rows == 0 { n } else { n.min(max_rows) };
        let range = |m: &Member| format!("{}[{}..{}]", m.tensor, m.channels[0], m.channels[1]);
        s += &format!("\ngroups: {} rows\n", self.groups.len());
        for gr in &self.groups[..limit(self.groups.len())] {
            let members: Vec<String> = gr.members.iter().take(4).map(range).collect();
            let more = if gr.members.len() > 4 {
                format!(" (+{} more)", gr.members.len() - 4)
            } else {
                String::new()
            };
            let mut path = gr.path.clone();
            if path.len() > 6 {
                let n = path.len();
                path = [&path[..3], &["…".to_string()], &path[n - 2..]].concat();
            }
            s += &format!(
                "  {:>5} {}{}{more}\n        via {}\n",
                gr.count,
                if gr.tied { "tied: " } else { "" },
                members.join(" + "),
                path.join(" → ")
            );
            if !gr.placed.is_empty() {
                s += &format!("        placed at {}\n", gr.placed.join(", "));
            }
        }
        if self.groups.len() > limit(self.groups.len()) {
            s += &format!(
                "  … {} more rows (--json lists all)\n",
                self.groups.len() - limit(self.groups.len())
            );
        }
        s += &format!("\nblocked: {} rows\n", self.blocked.len());
        for b in &self.blocked[..limit(self.blocked.len())] {
            s += &format!(
                "  {}[{}..{}] at {} ({}): {}\n",
                b.tensor, b.channels[0], b.channels[1], b.node, b.op, b.reason
            );
        }
        if self.blocked.len() > limit(self.blocked.len()) {
            s += &format!(
                "  … {} more rows (--json lists all)\n",
                self.blocked.len() - limit(self.blocked.len())
            );
        }
        s += &format!(
            "\nscale-invariant under BatchNormalization in training mode: {} rows\n",
            self.scale_invariant.len()
        );
        for v in &self.scale_invariant[..limit(self.scale_invariant.len())] {
            s += &format!(
                "  {}[{}..{}] -> {}\n",
                v.tensor, v.channels[0], v.channels[1], v.batch_norm
            );
        }
        if self.scale_invariant.len() > limit(self.scale_invariant.len()) {
            s += &format!(
                "  … {} more rows (--json lists all)\n",
                self.scale_invariant.len() - limit(self.scale_invariant.len())
            );
        }
        s
    }
}

/// `--explain NODE[:CHANNEL]`: the verdict for one unit, with the rule chains behind it.
pub fn explain(g: &Graph, a: &Analysis, spec: &str) -> Result<String> {
    let (name, ch) = match spec.rsplit_once(':') {
        Some((n, c)) if c.parse::<usize>().is_ok() => (n, c.parse::<usize>().unwrap()),
        _ => (spec, 0),
    };
    let units = &a.walk.units;
    let Some(node) =
        (0..g.nodes.len()).find(|&i| g.node_label(i) == name || g.nodes[i].outputs[0] == name)
    else {
        return Err(Error::usage(format!(
            "--explain: no node or tensor named '{name}'"
        )));
    };
    let mine: Vec<usize> = (0..units.len())
        .filter(|&u| units[u].producer == node)
        .collect();
    if mine.is_empty() {
        let producers: BTreeSet<String> = units.iter().map(|u| g.node_label(u.producer)).collect();
        let list: Vec<String> = producers.into_iter().take(8).collect();
        return Err(Error::usage(format!(
            "--explain: node '{name}' ({}) produces no units; layers that do: {}",
            g.nodes[node].op.onnx_name(),
            list.join(", ")
        )));
    }
    let Some(&u) = mine.get(ch) else {
        return Err(Error::usage(format!(
            "--explain: node '{name}' has {} output channels, not {}",
            mine.len(),
            ch + 1
        )));
    };
    let mut s = format!(
        "unit {}:{ch} (channel {ch} of tensor '{}')\n",
        g.node_label(node),
        g.nodes[node].outputs[0]
    );
    let members: Vec<usize> = match a.group_of[u] {
        Some(k) => a.groups[k].clone(),
        None => {
            let r = a.walk.find(u);
            (0..units.len()).filter(|&v| a.walk.find(v) == r).collect()
        }
    };
    match &units[u].blocked {
        Some(b) => {
            s += &format!(
                "verdict: blocked at {} ({}): {}\n",
                g.node_label(b.node),
                g.nodes[b.node].op.onnx_name(),
                b.why
            )
        }
        None => {
            s += &format!(
                "verdict: rescalable, one of {} independent rescalings\n",
                a.rescalings()
            )
        }
    }
    if members.len() > 1 {
        let m: Vec<String> = members
            .iter()
            .map(|&v| format!("{}:{}", g.node_label(units[v].producer), units[v].channel))
            .collect();
        s += &format!("tied with: {}\n", m.join(", "));
    }
    for &v in &members {
        s += &format!(
            "\nsteps of {}:{}\n",
            g.node_label(units[v].producer),
            units[v].channel
        );
        for (n, verdict) in &units[v].steps {
            let node = &g.nodes[*n];
            let leaves: Vec<String> = node
                .data_inputs()
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    format!(
                        "{}{k} = {name}",
                        if g.params.contains_key(name) {
                            "p"
                        } else {
                            "x"
                        }
                    )
                })
                .collect();
            s += &format!(
                "  at {} ({}), where {}\n",
                g.node_label(*n),
                node.op.onnx_name(),
                leaves.join(", ")
            );
            if verdict.outcome == super::query::Outcome::Block {
                s += &format!("    {}\n    {}\n", verdict.query, verdict.explanation);
            } else {
                for line in verdict.explanation.lines() {
                    s += &format!("    {line}\n");
                }
            }
        }
    }
    Ok(s)
}
