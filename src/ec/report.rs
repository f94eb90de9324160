//! The EC plan as JSON (`<stem>.ec.json`) and as a summary for people.

use super::basis::{Basis, BlockKind, Region};
use super::{GaugeStats, Scalar};
use crate::analysis::Analysis;
use crate::inspect::group_digits;
use crate::ir::Graph;
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

/// One rescaling of a block: enough to re-implement the step (spec §5 with the basis of
/// `super::basis`): its units, the chain its paths run through, its designated scalar.
#[derive(Debug, Serialize)]
pub struct UnitEntry {
    /// `tensor[channel]` of each unit (several when tied).
    pub units: Vec<String>,
    pub chain: u32,
    /// "in": the designated scalar is an in-edge of the unit; "out": an out-edge.
    pub designated_edge: &'static str,
    pub designated: Scalar,
}

/// One tensor of a block.
#[derive(Debug, Serialize)]
pub struct TensorEntry {
    pub param: String,
    /// The tensor's shape (for checks against another copy of the model, e.g. a PyTorch
    /// module, python/ecc_torch).
    pub dims: Vec<usize>,
    pub region: Region,
    /// The axis the chain runs along (chained tensors), and the chain of each position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_axis: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<u32>,
    /// Flat indices held constant (designated scalars and V).
    pub fixed: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct BlockPlan {
    /// "chain" (spec §3) or "star" (spec §11, §12: in-edges free, out-edges chained).
    pub kind: &'static str,
    pub layers: Vec<String>,
    /// Chain blocks: h_0 (inputs of the first layer), hidden widths, outputs of the last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub widths: Vec<usize>,
    /// Chain blocks: the free layer.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub free_layer: String,
    /// The free skeleton values V.
    pub free_skeleton: Vec<Scalar>,
    /// The V's (indices into `free_skeleton`) whose product is each chain's value: one per
    /// chain in chain and star blocks, several in a DAG block (chain 0 is the root's, empty).
    pub chains: Vec<Vec<u32>>,
    /// Chain blocks: flat indices (in the free layer's weight) of V, one per chain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub free_skeleton_indices: Vec<usize>,
    /// Chain blocks: rotation of the "mod" skeleton of each layer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<HiddenLayer>,
    /// Every rescaling of the block with its chain and designated scalar.
    pub units: Vec<UnitEntry>,
    pub tensors: Vec<TensorEntry>,
    pub params: usize,
    pub hidden_units: usize,
    pub rescalings: usize,
    pub basis_paths: usize,
    /// |V| of the free skeleton values in the canonical form: [min, median, max]. V is a
    /// class invariant (the product of a chain's skeleton weights); EC-SGD's step on the
    /// weights scales as lr / V² (spec §5), so this says which learning rates are sane.
    pub v_abs: [f64; 3],
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub model: String,
    /// BatchNormalization is analysed as `ecc train` runs it: "training".
    pub batch_norm: &'static str,
    pub params: usize,
    pub rescalings: usize,
    /// Radial directions (rows before a training-mode BatchNormalization, spec §11.1):
    /// trained by the plain step of their tensors (the blocks' or SGD's).
    pub radial: usize,
    pub redundant_biases: usize,
    pub class_dim: usize,
    pub params_in_blocks: usize,
    /// params_in_blocks / params.
    pub coverage: f64,
    /// Rescalings in blocks / all rescalings (H): the share of the symmetries EC-SGD
    /// quotients out.
    pub unit_coverage: f64,
    pub blocks: Vec<BlockPlan>,
    /// Layers with units that are outside every block, and why.
    pub outside: BTreeMap<String, String>,
    /// Every parameter's role.
    pub roles: BTreeMap<String, String>,
    pub gauge_units: usize,
    pub gauge_degenerate: usize,
}

impl PlanReport {
    /// `g` is the imported model, `canon` its canonical form (from [`super::convert`]).
    pub fn new(
        model: &str,
        g: &Graph,
        canon: &Graph,
        a: &Analysis,
        basis: &Basis,
        stats: &GaugeStats,
    ) -> Self {
        let mut roles: BTreeMap<String, String> = BTreeMap::new();
        let mut blocks = vec![];
        let unit_name =
            |u: usize| format!("{}[{}]", g.nodes[a.producer(u)].outputs[0], a.channel(u));
        for (bi, b) in basis.blocks.iter().enumerate() {
            let free_node = match &b.kind {
                BlockKind::Chain { layers, free, .. } => Some(layers[*free]),
                BlockKind::Star | BlockKind::Dag => None,
            };
            for (l, lp) in b.layers.iter().enumerate() {
                for (t, what) in lp.tensors().zip(["weight", "bias"]) {
                    let free = match (&b.kind, lp.region) {
                        (BlockKind::Chain { .. }, Region::Free) => ", free layer".to_string(),
                        (BlockKind::Chain { .. }, _) => String::new(),
                        (BlockKind::Star, Region::Free) => ", in-edges (free)".to_string(),
                        (BlockKind::Star, _) => ", out-edges (chained by input unit)".to_string(),
                        (BlockKind::Dag, Region::Free) => ", DAG block (unchained)".to_string(),
                        (BlockKind::Dag, _) => ", DAG block (chained by input unit)".to_string(),
                    };
                    roles.insert(
                        t.param.clone(),
                        format!("block {bi}, layer {l} {what}{free}"),
                    );
                }
            }
            let mut mags: Vec<f64> =
                b.v.iter()
                    .map(|s| canon.params[&s.param].get_f32(s.index).abs() as f64)
                    .collect();
            mags.sort_by(f64::total_cmp);
            let v_abs = match (mags.first(), mags.last()) {
                (Some(&lo), Some(&hi)) => [lo, mags[mags.len() / 2], hi],
                _ => [f64::NAN; 3],
            };
            let (widths, rotations, hidden) = match &b.kind {
                BlockKind::Chain {
                    layers,
                    widths,
                    rotations,
                    ..
                } => {
                    // Units by hidden layer, in the block's order.
                    let mut hidden: Vec<HiddenLayer> = vec![];
                    for up in &b.units {
                        let u = up.units[0];
                        let layer = g.node_label(a.producer(u));
                        match hidden.last_mut() {
                            Some(h) if h.layer == layer => {
                                h.units += 1;
                                h.designated_indices.push(up.designated.index);
                            }
                            _ => hidden.push(HiddenLayer {
                                layer,
                                units: 1,
                                designated_edge: if up.incoming { "in" } else { "out" },
                                designated_param: up.designated.param.clone(),
                                designated_indices: vec![up.designated.index],
                            }),
                        }
                    }
                    let _ = layers;
                    (widths.clone(), rotations.clone(), hidden)
                }
                BlockKind::Star | BlockKind::Dag => (vec![], vec![], vec![]),
            };
            blocks.push(BlockPlan {
                kind: match b.kind {
                    BlockKind::Chain { .. } => "chain",
                    BlockKind::Star => "star",
                    BlockKind::Dag => "dag",
                },
                v_abs,
                layers: b.layers.iter().map(|l| l.label.clone()).collect(),
                widths,
                free_layer: free_node.map(|n| g.node_label(n)).unwrap_or_default(),
                free_skeleton: b.v.clone(),
                chains: b.monomials.clone(),
                free_skeleton_indices: match b.kind {
                    BlockKind::Chain { .. } => b.v.iter().map(|s| s.index).collect(),
                    BlockKind::Star | BlockKind::Dag => vec![],
                },
                rotations,
                hidden,
                units: b
                    .units
                    .iter()
                    .map(|up| UnitEntry {
                        units: up.units.iter().map(|&u| unit_name(u)).collect(),
                        chain: up.chain,
                        designated_edge: if up.incoming { "in" } else { "out" },
                        designated: up.designated.clone(),
                    })
                    .collect(),
                tensors: b
                    .tensors()
                    .map(|t| {
                        let region = b
                            .layers
                            .iter()
                            .find(|l| l.tensors().any(|x| x.param == t.param))
                            .map_or(Region::Free, |l| l.region);
                        TensorEntry {
                            param: t.param.clone(),
                            dims: t.dims.clone(),
                            region,
                            chain_axis: (!t.chain.is_empty()).then_some(t.axis),
                            chain: t.chain.clone(),
                            fixed: t.fixed.clone(),
                        }
                    })
                    .collect(),
                params: b.params(),
                hidden_units: b.hidden_units(),
                rescalings: b.rescalings(),
                basis_paths: b.basis_paths(),
            });
        }
        let stats_of_bn = g.bn_statistics();
        let radial_rows: std::collections::HashSet<usize> =
            a.radial.iter().flatten().map(|&u| a.producer(u)).collect();
        for (i, n) in g.nodes.iter().enumerate() {
            for p in n.data_inputs().iter().filter(|p| g.params.contains_key(*p)) {
                if roles.contains_key(p) {
                    continue;
                }
                let role = if stats_of_bn.contains(p) {
                    "BatchNormalization running statistic (not trained)".to_string()
                } else if let Some(why) = basis.outside.get(&i) {
                    format!("outside the blocks: layer {} {why}", g.node_label(i))
                } else if radial_rows.contains(&i) {
                    format!(
                        "outside the blocks: {} ({}) reads no rescalable unit and its rows are radial (a training-mode BatchNormalization follows), trained with SGD",
                        g.node_label(i),
                        n.op.onnx_name()
                    )
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
        let in_blocks = basis.params_in_blocks();
        let ratio = |x: usize, y: usize| if y == 0 { 0.0 } else { x as f64 / y as f64 };
        PlanReport {
            model: model.to_string(),
            batch_norm: match a.mode {
                crate::analysis::BnMode::Inference => "inference",
                crate::analysis::BnMode::Training => "training",
            },
            params: a.params,
            rescalings: a.rescalings(),
            radial: a.radial.len(),
            redundant_biases: a.redundant_biases,
            class_dim: a.class_dim(),
            params_in_blocks: in_blocks,
            coverage: ratio(in_blocks, a.params),
            unit_coverage: ratio(basis.rescalings_in_blocks(), a.rescalings()),
            blocks,
            outside: basis
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
        if self.radial > 0 {
            s += &format!(
                "radial       {} directions (rows before a training-mode BatchNormalization; plain step), {} redundant biases\n",
                group_digits(self.radial),
                group_digits(self.redundant_biases)
            );
        }
        s += &format!(
            "blocks       {} covering {} parameters ({:.1}%) and {:.1}% of the rescalings\n",
            self.blocks.len(),
            group_digits(self.params_in_blocks),
            100.0 * self.coverage,
            100.0 * self.unit_coverage
        );
        const SHOWN: usize = 8;
        for (i, b) in self.blocks.iter().enumerate().take(SHOWN) {
            let widths: Vec<String> = b.widths.iter().map(|w| w.to_string()).collect();
            if b.kind == "dag" {
                s += &format!(
                    "  block {i}: DAG, {} rescalings ({} units), {} V's on {} chains (up to {} per chain), {} basis paths\n",
                    group_digits(b.rescalings),
                    group_digits(b.hidden_units),
                    group_digits(b.free_skeleton.len()),
                    group_digits(b.chains.len()),
                    b.chains.iter().map(Vec::len).max().unwrap_or(0),
                    group_digits(b.basis_paths)
                );
            } else if b.kind == "star" {
                s += &format!(
                    "  block {i}: star, {} rescalings ({} units), {} basis paths\n",
                    group_digits(b.rescalings),
                    group_digits(b.hidden_units),
                    group_digits(b.basis_paths)
                );
            } else {
                s += &format!(
                    "  block {i}: {} layers, widths {}, free layer {}, {} hidden units, {} basis paths\n",
                    b.layers.len(),
                    widths.join("-"),
                    b.free_layer,
                    group_digits(b.hidden_units),
                    group_digits(b.basis_paths)
                );
            }
            let mut layers = b.layers.clone();
            if layers.len() > 6 {
                let n = layers.len();
                layers = [
                    &layers[..3],
                    &[format!("… ({} more)", n - 5)],
                    &layers[n - 2..],
                ]
                .concat();
            }
            s += &format!("           {}\n", layers.join(" → "));
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
        if self.blocks.len() > SHOWN {
            s += &format!(
                "  … {} more blocks (see the .ec.json)\n",
                self.blocks.len() - SHOWN
            );
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
