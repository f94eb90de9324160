//! The basis: the one immutable description of a model's EC-SGD coordinates that the f64
//! reference step ([`super::step`]), the update programs ([`super::program`]), the plan
//! report and training read. Built once by [`super::convert`]; nothing changes it afterwards.
//!
//! Every block is a set of parameter tensors, each in one region, and a set of chains, each
//! with one free skeleton value V_c (one scalar of a tensor in the free region). Every
//! scalar that moves has at most one chain, found along one axis of its tensor, and its
//! basis-path coordinate is p = w·V_chain (chained) or p = w (unchained); the designated
//! scalars are held at magnitude 1 (spec §3, §5, §12). Two constructions fill this in:
//!
//! - chain blocks (spec §3): layers L_0..L_k joined by untied units, with a free layer s;
//!   tensors before s are chained by output unit, after s by input unit, s is free;
//! - star blocks (spec §11, §12; `docs/ec-dag.md`): units whose in-edges all start at the
//!   root (a BatchNormalization's gamma and beta in training mode, or a layer reading no
//!   rescalable unit) and whose out-edges all end at the root (a layer whose outputs are
//!   radial, blocked or graph outputs). Such a unit may be tied (a residual stream: in-edges
//!   in several BNs, out-edges in several layers), be read by several layers (fan-out) or
//!   lie in a concatenation. Its in-edge tensors are the free region; V_c is an in-edge
//!   weight scalar of its earliest unit; its designated scalar is its out-edge scalar of
//!   largest magnitude; its out-edge tensors are chained by input unit. This is spec §3's
//!   two-layer block with the free layer first, with layers generalized to sets of tensors.

use super::Scalar;
use serde::Serialize;

/// Where a tensor sits relative to its block's free skeleton values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Chained by output unit: p = w·V.
    Before,
    /// Unchained: p = w; holds the V scalars.
    Free,
    /// Chained by input unit: p = w·V.
    After,
}

/// One parameter tensor of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRole {
    pub param: String,
    pub dims: Vec<usize>,
    /// The axis the chain index runs along, and the chain of each position on it (empty:
    /// unchained). Scalar i has chain `chain[(i / inner) % chain.len()]`.
    pub axis: usize,
    pub chain: Vec<u32>,
    pub inner: usize,
    /// Flat indices held constant in the step (designated scalars and V), sorted.
    pub fixed: Vec<usize>,
    /// The V scalars in this tensor: (chain, flat index). They are also in `fixed`.
    pub v: Vec<(u32, usize)>,
}

impl TensorRole {
    /// A tensor chained along `axis` (empty `chain`: unchained).
    pub fn new(param: &str, dims: &[usize], axis: usize, chain: Vec<u32>) -> Self {
        TensorRole {
            param: param.to_string(),
            dims: dims.to_vec(),
            axis,
            inner: dims[axis + 1..].iter().product(),
            chain,
            fixed: vec![],
            v: vec![],
        }
    }
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The chain of flat index `i`, if the tensor is chained.
    pub fn chain_of(&self, i: usize) -> Option<usize> {
        (!self.chain.is_empty()).then(|| self.chain[(i / self.inner) % self.chain.len()] as usize)
    }
}

/// One layer of a block: its weight and bias tensors.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    pub node: usize,
    pub label: String,
    pub region: Region,
    pub weight: TensorRole,
    pub bias: Option<TensorRole>,
}

impl LayerPlan {
    pub fn tensors(&self) -> impl Iterator<Item = &TensorRole> {
        std::iter::once(&self.weight).chain(self.bias.as_ref())
    }
}

/// How one rescaling (a unit, or a tied group) is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitPlan {
    /// The analysis's units (more than one when tied).
    pub units: Vec<usize>,
    /// The chain whose V its basis paths run through.
    pub chain: u32,
    /// true: the designated scalar is an in-edge (before the free layer); false: out-edge.
    pub incoming: bool,
    pub designated: Scalar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// Spec §3: layer nodes L_0..L_k, widths h_0..h_{k+1}, free layer s, the rotation of
    /// the "mod" skeleton in each layer.
    Chain {
        layers: Vec<usize>,
        widths: Vec<usize>,
        free: usize,
        rotations: Vec<usize>,
    },
    /// Units whose in- and out-edges all touch the root (see the module doc).
    Star,
    /// The other rescalings of a DAG (residual streams without BN, fan-out and
    /// concatenation without BN) with the chain blocks they touch: every tensor chained by
    /// input unit, chains through several V's (`super::dag`).
    Dag,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub kind: BlockKind,
    /// The free skeleton values V_k: one scalar each.
    pub v: Vec<Scalar>,
    /// Each chain's value is the product of these V's (indices into `v`): P_c = Π V_k.
    /// Chain and star blocks have one V per chain (P_c = V_c); in a DAG block a chain may
    /// run through several, and a V may itself sit in a chained tensor, on a chain whose
    /// V's all come before it (docs/ec-dag.md §5).
    pub monomials: Vec<Vec<u32>>,
    pub layers: Vec<LayerPlan>,
    pub units: Vec<UnitPlan>,
}

impl Block {
    /// One V per chain, chain c through V_c.
    pub fn simple_monomials(n: usize) -> Vec<Vec<u32>> {
        (0..n as u32).map(|c| vec![c]).collect()
    }
    pub fn chains(&self) -> usize {
        self.monomials.len()
    }
    /// The tensor role that holds V_k, and the chain of V_k there (None: unchained).
    pub fn v_chain(&self, k: usize) -> Option<usize> {
        let s = &self.v[k];
        self.tensors()
            .find(|t| t.param == s.param)
            .and_then(|t| t.chain_of(s.index))
    }
    /// How the V's hang together, computed once: the chain each V sits on, the chains
    /// running through each V, and the later V's whose own chain runs through each V.
    pub fn v_links(&self) -> VLinks {
        let n = self.v.len();
        let chain_of_v: Vec<Option<usize>> = (0..n).map(|k| self.v_chain(k)).collect();
        let mut through = vec![vec![]; n];
        for (c, m) in self.monomials.iter().enumerate() {
            for &k in m {
                through[k as usize].push(c);
            }
        }
        let mut dependents = vec![vec![]; n];
        for (d, c) in chain_of_v.iter().enumerate() {
            if let Some(c) = c {
                for &k in &self.monomials[*c] {
                    dependents[k as usize].push(d);
                }
            }
        }
        VLinks {
            chain_of_v,
            through,
            dependents,
        }
    }

    /// P_c of every chain from the V values.
    pub fn chain_values<T: Copy + std::ops::Mul<Output = T>>(&self, v: &[T], one: T) -> Vec<T> {
        self.monomials
            .iter()
            .map(|m| m.iter().fold(one, |p, &k| p * v[k as usize]))
            .collect()
    }
    pub fn tensors(&self) -> impl Iterator<Item = &TensorRole> {
        self.layers.iter().flat_map(LayerPlan::tensors)
    }
    /// Scalars of the block's tensors.
    pub fn params(&self) -> usize {
        self.tensors().map(TensorRole::len).sum()
    }
    /// The rescalings (units or tied groups) the block quotients out.
    pub fn rescalings(&self) -> usize {
        self.units.len()
    }
    /// Hidden units (analysis units, tied ones counted each).
    pub fn hidden_units(&self) -> usize {
        self.units.iter().map(|u| u.units.len()).sum()
    }
    /// The block's share of the class dimension: its basis paths (coordinates).
    pub fn basis_paths(&self) -> usize {
        self.params() - self.rescalings()
    }
}

/// See [`Block::v_links`].
#[derive(Debug, Clone)]
pub struct VLinks {
    pub chain_of_v: Vec<Option<usize>>,
    pub through: Vec<Vec<usize>>,
    pub dependents: Vec<Vec<usize>>,
}

/// The EC-SGD coordinates of a model.
#[derive(Debug, Clone, Default)]
pub struct Basis {
    pub blocks: Vec<Block>,
    /// Layers with rescalable units outside every block, and why.
    pub outside: std::collections::BTreeMap<usize, String>,
}

impl Basis {
    pub fn params_in_blocks(&self) -> usize {
        self.blocks.iter().map(Block::params).sum()
    }
    pub fn rescalings_in_blocks(&self) -> usize {
        self.blocks.iter().map(Block::rescalings).sum()
    }
    /// Names of every tensor the blocks update.
    pub fn block_params(&self) -> std::collections::HashSet<String> {
        self.blocks
            .iter()
            .flat_map(|b| b.tensors().map(|t| t.param.clone()))
            .collect()
    }
}
