//! The e-graph language of the analysis: one operator per IR op (so a model's ops can be
//! written as terms), plus the symbolic algebra of a per-channel positive scale.
//!
//! Scale algebra (spec §1):
//! - `(scale s x)`: tensor x with channel c multiplied by s_c > 0, along its channel axis;
//! - `(pscale s p)`: parameter p with its slice for output channel c multiplied by s_c (a
//!   unit's incoming weights and bias);
//! - `(unscale s p)`: the same slices divided by s_c;
//! - `(iscale s p)`: parameter p with the slices that read input channel c multiplied by s_c
//!   (a unit's outgoing weights; for a grouped conv, within c's group);
//! - `(spread s)`: s laid out over a reshaped tensor, each channel's factor on all of the
//!   elements that came from it (flatten into a dense layer, spec §6);
//! - `(place s)`: s on one input's channel range of a concatenation, 1 elsewhere.
//!
//! Leaves: `none` (an absent bias), `0`, `inf`, `-inf` and other constants (Clip bounds),
//! and free names for the operands of a query.

use egg::{define_language, Id, Symbol};

define_language! {
    pub enum Ec {
        "scale" = Scale([Id; 2]),
        "pscale" = PScale([Id; 2]),
        "unscale" = Unscale([Id; 2]),
        "iscale" = IScale([Id; 2]),
        "spread" = Spread(Id),
        "place" = Place(Id),
        "param" = Param(Id),

        "relu" = Relu(Id),
        "leaky-relu" = LeakyRelu(Id),
        "prelu" = PRelu([Id; 2]),
        "clip" = Clip([Id; 3]),
        "sigmoid" = Sigmoid(Id),
        "tanh" = Tanh(Id),
        "hard-sigmoid" = HardSigmoid(Id),
        "hard-swish" = HardSwish(Id),
        "gelu" = Gelu(Id),
        // InstanceNormalization's normalization (no rule: a scale does not pass it; with
        // epsilon > 0 it does not vanish exactly either).
        "instance-norm" = InstanceNorm(Id),
        "softmax" = Softmax(Id),
        "log-softmax" = LogSoftmax(Id),
        "lrn" = Lrn(Id),
        "max-pool" = MaxPool(Id),
        "average-pool" = AveragePool(Id),
        "global-average-pool" = GlobalAveragePool(Id),
        "global-max-pool" = GlobalMaxPool(Id),
        "dropout" = Dropout(Id),
        "identity" = Identity(Id),
        "flatten" = Flatten(Id),
        "reshape" = Reshape(Id),
        "squeeze" = Squeeze(Id),
        "unsqueeze" = Unsqueeze(Id),
        // A reshape or flatten that splits the channel axis or merges it into the batch.
        "channel-mixing-reshape" = MixingReshape(Id),
        "transpose" = Transpose(Id),
        // Pad off the channel axis with zeros (or reflect, edge, wrap), with another
        // constant, and Slice off the channel axis.
        "pad" = Pad(Id),
        "pad-value" = PadValue(Id),
        "slice" = Slice(Id),
        // Resize / Upsample off the channel axis: each output a fixed combination of input
        // positions of its channel (nearest, linear, cubic).
        "resize" = Resize(Id),
        // tf_crop_and_resize with a non-zero extrapolation value (no rule).
        "resize-value" = ResizeValue(Id),
        // (concat before x after): x is one input of a channel-axis concatenation.
        "concat" = Concat([Id; 3]),
        // A concatenation along an axis other than the channel axis.
        "concat-other-axis" = ConcatOther([Id; 2]),
        "add" = Add([Id; 2]),
        "sub" = Sub([Id; 2]),
        "mul" = Mul([Id; 2]),
        "div" = Div([Id; 2]),
        // Elementwise Max and Min of two inputs (of more: nested, as Sum's adds).
        "max" = Max([Id; 2]),
        "min" = Min([Id; 2]),
        // (gemm x w b): x·wᵀ + b, Gemm with transB=1 (PyTorch's Linear); (gemm-n x w b): x·w + b.
        "gemm" = Gemm([Id; 3]),
        "gemm-n" = GemmN([Id; 3]),
        // Gemm with transA=1, which ecc does not follow.
        "gemm-trans-a" = GemmTransA([Id; 3]),
        "matmul" = MatMul([Id; 2]),
        // (conv group x w b)
        "conv" = Conv([Id; 4]),
        // (conv-transpose x w b): ConvTranspose of group 1, weight (in, out, k..).
        "conv-transpose" = ConvTranspose([Id; 3]),
        // A grouped ConvTranspose, which ecc does not follow (no rule).
        "conv-transpose-grouped" = ConvTransposeGrouped([Id; 3]),
        // (batch-norm x scale bias mean var), inference form.
        "batch-norm" = BatchNorm([Id; 5]),
        // Batch normalization with batch statistics (training mode), affine part left out.
        "batch-norm-train" = BatchNormTrain(Id),
        Leaf(Symbol),
    }
}

/// Cost used to read a verdict off a saturated e-graph: prefer terms with no scale left
/// inside an op (the scale was absorbed or pulled out), then a scale only at the root (it
/// passes), then size.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Placement {
    /// Scales sitting below some op that did not let them out.
    pub buried: usize,
    /// The term is `(scale ..)` at its root.
    pub top: bool,
    pub size: usize,
}

pub struct PlacementCost;

impl egg::CostFunction<Ec> for PlacementCost {
    type Cost = Placement;
    fn cost<C>(&mut self, enode: &Ec, mut costs: C) -> Placement
    where
        C: FnMut(Id) -> Placement,
    {
        use egg::Language;
        match enode {
            Ec::Scale([s, x]) => {
                let (s, x) = (costs(*s), costs(*x));
                Placement {
                    buried: s.buried + x.buried + x.top as usize,
                    top: true,
                    size: 1 + s.size + x.size,
                }
            }
            _ => {
                let mut c = Placement {
                    buried: 0,
                    top: false,
                    size: 1,
                };
                for &ch in enode.children() {
                    let k = costs(ch);
                    c.buried += k.buried + k.top as usize;
                    c.size += k.size;
                }
                // `pscale`/`unscale`/`iscale`/`spread`/`place` wrap scale vectors, not tensors: a scale
                // symbol inside them is not buried.
                if matches!(
                    enode,
                    Ec::PScale(_) | Ec::Unscale(_) | Ec::IScale(_) | Ec::Spread(_) | Ec::Place(_)
                ) {
                    c.buried = enode.children().iter().map(|&ch| costs(ch).buried).sum();
                }
                c
            }
        }
    }
}
