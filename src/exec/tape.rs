//! The executor's own backward pass for training: a tape of the nodes' backward passes,
//! run in reverse, with the gradients of the graph's values kept by name.
//!
//! Why not candle's `backward()`: candle's gradient store adds every gradient it receives
//! to a tensor of zeros it allocates for it (`or_insert`, then `add`), on one thread, while
//! the other thread waits: a fill and an add over every activation's gradient, ~10% of a
//! ResNet-20 training step on this CPU (issue 12, docs/speed.md). Here a value's first
//! gradient is kept as it is and a second one (fan-out: a residual block's input) is added
//! in parallel ([`kernels::add`]).
//!
//! What the tape runs, node by node (the forward pass is [`Executor::forward_tape`]):
//! - ecc's kernels (convolution, dense, BatchNormalization in training mode, pooling,
//!   add-ReLU): the same backward functions as their candle ops' `bwd`
//!   ([`kernels::Recorded`]);
//! - reshapes, Identity and Dropout that drops nothing: the gradient reshaped or passed on;
//! - every other op, through candle's autograd on that node alone: its inputs become fresh
//!   variables (a copy), the op runs on them in candle's graph, and its backward is
//!   `backward()` of sum(output · gradient), which gives the inputs exactly the gradients
//!   candle's whole-graph pass gives them (the product with the all-ones seed is exact).
//!
//! The gradients are those of candle's whole-graph pass bit for bit (test
//! `the_tape_gives_candles_gradients_bit_for_bit`) with one proviso: a value read by three
//! or more nodes gets its contributions added in the reverse order of the nodes, which may
//! differ from the order of candle's graph walk (floating-point addition is not associative;
//! with two readers, as in a residual block, the order does not matter).

use super::kernels::{self, Recorded};
use super::{Executor, Mode};
use crate::error::{Error, Result};
use crate::ir::Op;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// How one node's backward pass runs.
pub(super) enum Back {
    /// One of ecc's kernels.
    Kernel(Recorded),
    /// The output gradient goes to the one input unchanged (Identity, Dropout that drops
    /// nothing, a ReLU fused into the node before it).
    Pass,
    /// The output gradient, reshaped to the one input's dims.
    Reshape,
    /// candle's autograd on this node: the fresh variables standing for the inputs (`None`
    /// for graph inputs, which need no gradient) and the output in candle's graph.
    Graph { vars: Vec<Option<Var>>, out: Tensor },
}

/// One node on the tape: its index (its inputs' and output's names are the node's), the
/// dims its data inputs had, its backward pass.
pub struct Step {
    node: usize,
    dims: Vec<Vec<usize>>,
    back: Back,
}

/// The backward passes of one forward pass ([`Executor::forward_tape`]).
pub struct Tape {
    steps: Vec<Step>,
}

impl Executor {
    /// The forward pass in training mode (as [`Executor::forward_train`]), recording each
    /// node's backward pass on a tape instead of candle's graph: the outputs track nothing,
    /// and [`Tape::backward`] gives the parameters' gradients.
    pub fn forward_tape(&self, inputs: &[Tensor], seed: u64) -> Result<(Vec<Tensor>, Tape)> {
        let mut steps = vec![];
        let out = self.run(inputs, Mode::Train { seed }, Some(&mut steps))?;
        Ok((out, Tape { steps }))
    }

    /// Run node `i` for the tape: its output (tracking nothing) and its step.
    pub(super) fn tape_node(
        &self,
        i: usize,
        x: &[&Tensor],
        out_dims: &[usize],
        relu: bool,
        fused_in: bool,
        mode: Mode,
    ) -> Result<(Tensor, Step)> {
        let node = &self.nodes[i];
        let step = |back| Step {
            node: i,
            dims: x.iter().map(|t| t.dims().to_vec()).collect(),
            back,
        };
        if fused_in {
            // The ReLU ran inside the node before (its kernel applies the mask backward).
            return Ok((x[0].clone(), step(Back::Pass)));
        }
        let train = mode != Mode::Eval;
        let plain = match &node.op {
            _ if relu => None,
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                Some(Back::Reshape)
            }
            Op::Identity => Some(Back::Pass),
            Op::Dropout { ratio } if *ratio == 0.0 || !train => Some(Back::Pass),
            _ => None,
        };
        if let Some(back) = plain {
            let (y, _) = self.run_node(i, x, out_dims, relu, mode, kernels::Rec::Graph)?;
            return Ok((y, step(back)));
        }
        let kernel = match &node.op {
            Op::BatchNorm { .. } => train,
            Op::Binary { .. } => relu,
            Op::Gemm { .. }
            | Op::Conv(_)
            | Op::ConvTranspose(_)
            | Op::MaxPool(_)
            | Op::AveragePool { .. } => true,
            _ => false,
        };
        if kernel {
            if let (y, Some(b)) = self.run_node(i, x, out_dims, relu, mode, kernels::Rec::Tape)? {
                return Ok((y, step(Back::Kernel(b))));
            }
            // A form its kernel does not take (a general Gemm, pooling with a ReLU after
            // it): nothing was recorded, so run it again in candle's graph below. (No
            // BatchNormalization in training mode gets here: its statistics moved once.)
        }
        let vars = node
            .data_inputs()
            .iter()
            .zip(x)
            .map(|(n, t)| {
                Ok(if let Some(v) = self.params.get(n.as_str()) {
                    Some(v.clone())
                } else if self.inputs.iter().any(|g| g == n) {
                    None
                } else {
                    Some(Var::from_tensor(t)?)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let args: Vec<&Tensor> = vars
            .iter()
            .zip(x)
            .map(|(v, &t)| v.as_ref().map_or(t, |v| v.as_tensor()))
            .collect();
        let (out, _) = self.run_node(i, &args, out_dims, relu, mode, kernels::Rec::Graph)?;
        Ok((out.detach(), step(Back::Graph { vars, out })))
    }
}

impl Tape {
    /// The parameters' gradients, by name, from the gradients of the graph's outputs (one
    /// per output, its shape; `None`: that output does not reach the loss); `ex` is the
    /// executor that recorded the tape.
    pub fn backward(
        self,
        ex: &Executor,
        out_grads: &[Option<Tensor>],
    ) -> Result<HashMap<String, Tensor>> {
        if out_grads.len() != ex.outputs.len() {
            return Err(Error::exec(format!(
                "backward: {} output gradients for {} outputs",
                out_grads.len(),
                ex.outputs.len()
            )));
        }
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        for (name, g) in ex.outputs.iter().zip(out_grads) {
            if let Some(g) = g {
                accumulate(&mut grads, name, g.clone())?;
            }
        }
        let wanted = |name: &str| !ex.inputs.iter().any(|i| i == name);
        for step in self.steps.into_iter().rev() {
            let node = &ex.nodes[step.node];
            let Some(g) = grads.remove(&node.outputs[0]) else {
                continue;
            };
            let inputs = node.data_inputs();
            let want: Vec<bool> = inputs.iter().map(|n| wanted(n)).collect();
            let ins = match step.back {
                Back::Kernel(b) => b.backward(&g, &want)?,
                Back::Pass => vec![Some(g)],
                Back::Reshape => vec![Some(g.reshape(step.dims[0].as_slice())?)],
                Back::Graph { vars, out } => {
                    if out.track_op() {
                        let store = (&out * &g)?.sum_all()?.backward()?;
                        vars.iter()
                            .map(|v| v.as_ref().and_then(|v| store.get(v.as_tensor()).cloned()))
                            .collect()
                    } else {
                        vec![]
                    }
                }
            };
            for ((name, dims), gi) in inputs.iter().zip(&step.dims).zip(ins) {
                let Some(gi) = gi else { continue };
                if !wanted(name) {
                    continue;
                }
                let gi = if gi.dims() == dims.as_slice() {
                    gi
                } else if gi.elem_count() == dims.iter().product::<usize>() {
                    gi.reshape(dims.as_slice())?
                } else {
                    return Err(Error::exec(format!(
                        "backward: gradient of '{name}' has shape {:?}, the value {dims:?}",
                        gi.dims()
                    ))
                    .at_node(ex.labels[step.node].clone()));
                };
                accumulate(&mut grads, name, gi)?;
            }
        }
        Ok(ex
            .params
            .keys()
            .filter_map(|k| grads.remove(k).map(|g| (k.clone(), g)))
            .collect())
    }
}

/// Add `g` to the gradient of `name`: kept as it is when it is the first.
fn accumulate(grads: &mut HashMap<String, Tensor>, name: &str, g: Tensor) -> Result<()> {
    let g = match grads.remove(name) {
        Some(old) => kernels::add(&old, &g)?,
        None => g,
    };
    grads.insert(name.to_string(), g);
    Ok(())
}
