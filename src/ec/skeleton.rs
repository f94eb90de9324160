//! Skeleton geometry of a block (spec §3): which scalar stands for a unit-level edge, the
//! chain of every hidden unit, and the free skeleton weights V of the free layer.
//!
//! With widths that do not decrease before the free layer s and do not increase after it
//! (what [`super::pieces`] guarantees), the rotated "mod" skeleton gives every hidden unit
//! one chain: units before s follow their out-edges up to s, units after s follow their
//! in-edges down to s. V_j is the skeleton weight of chain j in layer s: the in-edge of unit
//! j of the free layer's output, or, when the free layer is the block's last, the out-edge
//! of unit j of its input.

use super::{centre, weight_index, EcBlock};
use crate::analysis::Analysis;
use crate::ir::Graph;

/// One weight layer of a block.
#[derive(Debug, Clone)]
pub struct LayerGeom {
    pub weight: String,
    pub bias: Option<String>,
    pub dims: Vec<usize>,
    pub out_axis: usize,
    pub in_axis: usize,
    /// How input unit c lies along `in_axis` (channels C, block): positions
    /// o*C*block + c*block + i. For the first layer, one position per input.
    pub in_channels: usize,
    pub in_block: usize,
}

impl LayerGeom {
    pub fn outputs(&self) -> usize {
        self.dims[self.out_axis]
    }
    /// The scalar standing for edge (out o, input unit i).
    pub fn edge(&self, o: usize, i: usize) -> usize {
        let len = self.dims[self.in_axis];
        let pos = if self.in_block == 1 && self.in_channels == len {
            i
        } else {
            centre(self.in_channels, self.in_block, i, len)
        };
        weight_index(&self.dims, self.out_axis, self.in_axis, o, pos)
    }
}

pub fn geometry(g: &Graph, a: &Analysis, b: &EcBlock) -> Vec<LayerGeom> {
    b.layers
        .iter()
        .enumerate()
        .map(|(l, &node)| {
            let view = g.layer(node).expect("block layers are layers");
            let weight = view.weight.to_string();
            let dims = g.params[&weight].dims.clone();
            let (oa, ia) = (
                view.out_axis,
                view.in_axis.expect("block layers have inputs"),
            );
            let (in_channels, in_block) = if l == 0 {
                (dims[ia], 1)
            } else {
                let u = b.hidden[l - 1][0];
                let e = a.out_edit(u, &weight).expect("consumer edit");
                (e.channels, e.block)
            };
            LayerGeom {
                weight,
                bias: view.bias.map(str::to_string),
                dims,
                out_axis: oa,
                in_axis: ia,
                in_channels,
                in_block,
            }
        })
        .collect()
}

/// The free skeleton weights of the free layer, as flat indices of its weight, for a
/// rotation r.
fn v_indices(geo: &[LayerGeom], b: &EcBlock, r: usize) -> Vec<usize> {
    let s = b.free;
    let f = &geo[s];
    if s < b.hidden.len() {
        (0..f.outputs())
            .map(|j| f.edge(j, (j + r) % f.in_channels))
            .collect()
    } else {
        (0..f.in_channels)
            .map(|i| f.edge((i + r) % f.outputs(), i))
            .collect()
    }
}

/// The rotation of the free layer's skeleton: V far from zero, relative to the largest
/// weight of the layer (V sits in denominators of the EC-SGD step).
pub fn free_rotation(g: &Graph, a: &Analysis, b: &EcBlock) -> usize {
    let geo = geometry(g, a, b);
    let f = &geo[b.free];
    let w = &g.params[&f.weight];
    let span = if b.free < b.hidden.len() {
        f.in_channels
    } else {
        f.outputs()
    };
    (0..64usize.min(span))
        .max_by(|&r1, &r2| {
            let m = |r: usize| {
                v_indices(&geo, b, r)
                    .iter()
                    .map(|&i| w.get_f32(i).abs())
                    .fold(f32::INFINITY, f32::min)
            };
            m(r1)
                .partial_cmp(&m(r2))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(r2.cmp(&r1))
        })
        .unwrap_or(0)
}

/// A block's chains.
#[derive(Debug, Clone)]
pub struct Skeleton {
    pub geo: Vec<LayerGeom>,
    /// chains[l][u]: the chain of unit u of hidden layer l.
    pub chains: Vec<Vec<usize>>,
    /// V_j as a flat index of the free layer's weight.
    pub v: Vec<usize>,
}

pub fn skeleton(g: &Graph, a: &Analysis, b: &EcBlock) -> Skeleton {
    let geo = geometry(g, a, b);
    let (s, k) = (b.free, b.hidden.len());
    let h: Vec<usize> = b.hidden.iter().map(Vec::len).collect();
    let r = &b.rotations;
    let mut chains: Vec<Vec<usize>> = h.iter().map(|&n| vec![usize::MAX; n]).collect();
    // The hidden layer that holds chain indices directly.
    let anchor = if s < k { s } else { k - 1 };
    chains[anchor] = (0..h[anchor]).collect();
    // After s: unit u's chain is that of its smallest skeleton tail i, (i + r) mod h = u.
    for l in anchor + 1..k {
        for u in 0..h[l] {
            let i = (0..h[l - 1])
                .find(|&i| (i + r[l]) % h[l] == u)
                .expect("widths do not increase after the free layer");
            chains[l][u] = chains[l - 1][i];
        }
    }
    // Before: unit v's chain is that of its smallest skeleton head j, (j + r) mod h = v.
    for l in (0..anchor).rev() {
        for v in 0..h[l] {
            let j = (0..h[l + 1])
                .find(|&j| (j + r[l + 1]) % h[l] == v)
                .expect("widths do not decrease before the free layer");
            chains[l][v] = chains[l + 1][j];
        }
    }
    let v = v_indices(&geo, b, r[s]);
    Skeleton { geo, chains, v }
}
