//! The EC plan as JSON (`<stem>.ec.json`) and as a summary for people.

use super::{EcPlan, GaugeStats};
use crate::analysis::Analysis;
use crate::inspect::group_digits;
use crate::ir::{Graph, Op};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct HiddenLayer {
    /// The layer producing these units.
    pub layer: String,
    pub units: usize,
    /// "in": each unit's designated weight is in its own row; "out": in the next layer.
    pub designated_edge: &'static str,
    pub designated_param: String,
    /// Flat indices of the designated weights, one per unit.
    pub designated_indices: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct BlockPlan {
    pub layers: Vec<String>,
    /// h_0 (inputs of the first layer), hidden widths, outputs of the last layer.
    pub widths: Vec<usize>,
    pub free_layer: String,
    /// Flat indices (in the free layer's weight) of the free skeleton weights V, one per chain.
    pub free_skeleton_indices: Vec<usize>,
    /// Rotation of the "mod" skeleton of each layer.
    pub rotations: Vec<usize>,
    pub hidden: Vec<HiddenLayer>,
    pub params: usize,
    pub hidden_units: usize,
    pub basis_paths: usize,
    /// |V| of the free skeleton values in the canonical form: [min, median, max]. V is a
    /// class invariant (the product of a chain's skeleton weights); EC-SGD's step on the
    /// weights scales as lr / V² (spec §5), so this says which learning rates are sane.
    pub v_abs: [f64; 3],
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub model: String,
    pub params: usize,
    pub rescalings: usize,
    pub class_dim: usize,
    pub params_in_blocks: usize,
    /// params_in_blocks / params.
    pub coverage: f64,
    pub blocks: Vec<BlockPlan>,
    /// Layers with units that are outside every block, and why.
    pub outside: BTreeMap<String, String>,
    /// Every parameter's role.
    pub roles: BTreeMap<String, String>,
    pub gauge_units: usize,
    pub gauge_degenerate: usize,
}

impl PlanReport {
    /// `g` is the imported model, `canon` its canonical form (from [`super::normalize`]).
    pub fn new(
        model: &str,
        g: &Graph,
        canon: &Graph,
        a: &Analysis,
        plan: &EcPlan,
        stats: &GaugeStats,
    ) -> Self {
        let mut roles: BTreeMap<String, String> = BTreeMap::new();
        let mut blocks = vec![];
        for (bi, b) in plan.blocks.iter().enumerate() {
            for (l, &node) in b.layers.iter().enumerate() {
                for (k, p) in g.nodes[node].data_inputs().iter().enumerate().skip(1) {
                    if g.params.contains_key(p) {
                        let what = if k == 1 { "weight" } else { "bias" };
                        let free = if l == b.free { ", free layer" } else { "" };
                        roles.insert(p.clone(), format!("block {bi}, layer {l} {what}{free}"));
                    }
                }
            }
            let first = &g.nodes[b.layers[0]];
            let w0 = &g.params[&first.data_inputs()[1]].dims;
            let in_axis = match first.op {
                Op::Gemm { trans_b: false, .. } | Op::MatMul => 0,
                _ => 1,
            };
            let mut widths = vec![w0[in_axis]];
            widths.extend(b.hidden.iter().map(Vec::len));
            let last = &g.nodes[*b.layers.last().expect("layers")];
            let wl = &g.params[&last.data_inputs()[1]].dims;
            widths.push(wl[super::out_axis(&last.op)]);
            let v = super::skeleton::skeleton(g, a, b).v;
            let free_w = &canon.params[&g.nodes[b.layers[b.free]].data_inputs()[1]];
            let mut mags: Vec<f64> = match &free_w.data {
                crate::ir::TensorData::F32(w) => v.iter().map(|&i| w[i].abs() as f64).collect(),
                crate::ir::TensorData::I64(_) => vec![],
            };
            mags.sort_by(f64::total_cmp);
            let v_abs = match (mags.first(), mags.last()) {
                (Some(&lo), Some(&hi)) => [lo, mags[mags.len() / 2], hi],
                _ => [f64::NAN; 3],
            };
            blocks.push(BlockPlan {
                v_abs,
                layers: b.layers.iter().map(|&n| g.node_label(n)).collect(),
                widths,
                free_layer: g.node_label(b.layers[b.free]),
                free_skeleton_indices: v,
                rotations: b.rotations.clone(),
                hidden: b
                    .designated
                    .iter()
                    .enumerate()
                    .map(|(l, ds)| HiddenLayer {
                        layer: g.node_label(b.layers[l]),
                        units: ds.len(),
                        designated_edge: if ds.first().is_some_and(|d| d.incoming) {
                            "in"
                        } else {
                            "out"
                        },
                        designated_param: ds
                            .first()
                            .map(|d| d.weight.param.clone())
                            .unwrap_or_default(),
                        designated_indices: ds.iter().map(|d| d.weight.index).collect(),
                    })
                    .collect(),
                params: b.params,
                hidden_units: b.hidden_units(),
                basis_paths: b.basis_paths(),
            });
        }
        let stats_of_bn = g.bn_statistics();
        for (i, n) in g.nodes.iter().enumerate() {
            for p in n.data_inputs().iter().filter(|p| g.params.contains_key(*p)) {
                if roles.contains_key(p) {
                    continue;
                }
                let role = if stats_of_bn.contains(p) {
                    "BatchNormalization running statistic (not trained)".to_string()
                } else if let Some(why) = plan.outside.get(&i) {
                    format!("outside the blocks: layer {} {why}", g.node_label(i))
                } else {
                    format!(
                        "outside the blocks: read by {} ({}), trained with SGD",
                        g.node_label(i),
                        n.op.onnx_name()
                    )
                };
                roles.insert(p.clone(), role);
            }
        }
        let in_blocks = plan.params_in_blocks();
        PlanReport {
            model: model.to_string(),
            params: a.params,
            rescalings: a.rescalings(),
            class_dim: a.class_dim(),
            params_in_blocks: in_blocks,
            coverage: if a.params == 0 {
                0.0
            } else {
                in_blocks as f64 / a.params as f64
            },
            blocks,
            outside: plan
                .outside
                .iter()
                .map(|(&n, w)| (g.node_label(n), w.clone()))
                .collect(),
            roles,
            gauge_units: stats.units,
            gauge_degenerate: stats.degenerate,
        }
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        s += &format!("model        {}\n", self.model);
        s += &format!(
            "params (m)   {}; rescalings (H) {}; class dim {}\n",
            group_digits(self.params),
            group_digits(self.rescalings),
            group_digits(self.class_dim)
        );
        s += &format!(
            "blocks       {} covering {} parameters ({:.1}%)\n",
            self.blocks.len(),
            group_digits(self.params_in_blocks),
            100.0 * self.coverage
        );
        for (i, b) in self.blocks.iter().enumerate() {
            let widths: Vec<String> = b.widths.iter().map(|w| w.to_string()).collect();
            s += &format!(
                "  block {i}: {} layers, widths {}, free layer {}, {} hidden units, {} basis paths\n",
                b.layers.len(),
                widths.join("-"),
                b.free_layer,
                group_digits(b.hidden_units),
                group_digits(b.basis_paths)
            );
            s += &format!("           {}\n", b.layers.join(" → "));
            let [lo, med, hi] = b.v_abs;
            s += &format!(
                "           |V| (free skeleton values) min {lo:.2e}, median {med:.2e}, max {hi:.2e}\n"
            );
            if med < 1e-2 {
                s += &format!(
                    "           EC-SGD steps scale as lr/V²: from this form use lr ≈ {:.0e} × the usual\n",
                    med * med
                );
            }
        }
        if !self.outside.is_empty() {
            s += &format!("outside      {} layers with units:\n", self.outside.len());
            for (layer, why) in self.outside.iter().take(12) {
                s += &format!("  {layer}: {why}\n");
            }
            if self.outside.len() > 12 {
                s += &format!("  … {} more (see the .ec.json)\n", self.outside.len() - 12);
            }
        }
        s += &format!(
            "gauge        {} units normalized, {} left (zero quantity)\n",
            self.gauge_units, self.gauge_degenerate
        );
        s
    }
}
