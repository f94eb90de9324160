//! The layer view: which operations are linear layers (or, for batch normalization in
//! training mode, diagonal affine layers), which of their inputs are the weight and the
//! bias, and which axes of the weight index output channels and input features. Every stage
//! that asks "is this a layer, and how is its weight laid out" asks here.

use super::{Graph, Op};

/// One layer of a graph: a Gemm, MatMul, Conv or ConvTranspose (group 1) whose weight is a
/// parameter, or a BatchNormalization whose scale is one (a diagonal layer: gamma is its
/// weight, beta its bias, and there is no input axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer<'a> {
    pub node: usize,
    pub weight: &'a str,
    pub bias: Option<&'a str>,
    /// The axis of the weight that indexes output channels.
    pub out_axis: usize,
    /// The axis of the weight that indexes input features (None: diagonal).
    pub in_axis: Option<usize>,
    /// The axis of the layer's output tensor that holds its channels.
    pub channel_axis: usize,
}

impl Layer<'_> {
    pub fn is_diagonal(&self) -> bool {
        self.in_axis.is_none()
    }
}

/// The weight axes of a layer op: (output channels, input features, output tensor's channel
/// axis for an output of rank `out_rank`). None for ops that are not layers.
pub fn layer_axes(op: &Op, out_rank: usize) -> Option<(usize, Option<usize>, usize)> {
    match op {
        Op::Gemm {
            trans_a: false,
            trans_b: true,
            ..
        } => Some((0, Some(1), 1)),
        Op::Gemm {
            trans_a: false,
            trans_b: false,
            ..
        } => Some((1, Some(0), 1)),
        Op::MatMul => Some((1, Some(0), out_rank.saturating_sub(1))),
        Op::Conv(_) => Some((0, Some(1), 1)),
        // Weight (in, out, k..); a grouped one is not followed (its output channels' weights
        // are blocks of rows, not slices of one axis).
        Op::ConvTranspose(c) if c.group == 1 => Some((1, Some(0), 1)),
        Op::BatchNorm { .. } => Some((0, None, 1)),
        _ => None,
    }
}

impl Graph {
    /// Node `node` as a layer, if it is one (see [`Layer`]).
    pub fn layer(&self, node: usize) -> Option<Layer<'_>> {
        let n = &self.nodes[node];
        let out_rank = self.shapes.get(&n.outputs[0]).map_or(2, |s| s.rank());
        let (out_axis, in_axis, channel_axis) = layer_axes(&n.op, out_rank)?;
        let ins = n.data_inputs();
        let weight = ins.get(1).filter(|w| self.params.contains_key(*w))?;
        let rank = self.params[weight].dims.len();
        match in_axis {
            Some(_) if rank < 2 => return None,
            Some(_) if matches!(n.op, Op::MatMul) && rank != 2 => return None,
            None if rank != 1 => return None,
            _ => {}
        }
        let bias = ins
            .get(2)
            .filter(|b| self.params.contains_key(*b))
            .map(String::as_str);
        Some(Layer {
            node,
            weight,
            bias,
            out_axis,
            in_axis,
            channel_axis,
        })
    }

    /// The nodes that are layers with weights (Gemm, MatMul, Conv; not batch normalization).
    pub fn weight_layers(&self) -> impl Iterator<Item = Layer<'_>> {
        (0..self.nodes.len())
            .filter_map(|i| self.layer(i))
            .filter(|l| !l.is_diagonal())
    }
}
