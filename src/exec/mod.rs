//! The executor: runs an IR graph forward with candle on the CPU, batched, in f32.
//! Parameters are candle [`Var`]s keyed by their ONNX names, so gradients can be taken
//! with `backward()`, or, in training, by the executor's own tape ([`tape`]);
//! [`Executor::write_back`] copies their values into a graph for export.

pub mod cpu;
pub mod kernels;
pub mod tape;

use crate::error::{Error, Result};
use crate::ir::{BinaryKind, Constant, Graph, Node, Op, Shape, TensorData};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::{BTreeMap, HashMap};

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inference: BatchNormalization with its running statistics, Dropout the identity.
    Eval,
    /// Training: BatchNormalization with batch statistics (and its running statistics
    /// updated in place, spec §11), Dropout drawing its masks from `seed` (one seed per
    /// step keeps runs deterministic and resumable).
    Train { seed: u64 },
}

pub struct Executor {
    nodes: Vec<Node>,
    shapes: HashMap<String, Shape>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    params: BTreeMap<String, Var>,
    /// For each node, the values whose last reader it is (freed after it runs).
    frees: Vec<Vec<String>>,
    labels: Vec<crate::error::NodeRef>,
    /// `fused[i]`: node i is a Gemm, Conv, BatchNormalization or Add of two same-shaped
    /// tensors whose only reader is the Relu right after it, and the ReLU runs inside node
    /// i's kernel (the Relu node then passes the value on).
    fused: Vec<bool>,
    device: Device,
    dtype: DType,
}

/// Make the calling thread (the CLI's main thread) one of the threads of rayon's global pool,
/// which the kernels and matmuls run on. Otherwise every parallel kernel called from it hands
/// its work to the pool's threads and sleeps until they finish: two thread hand-offs per
/// kernel, and the pool has a thread more than there are cores. Measured with a training
/// step (MLP 784-64x4-10, batch 64): 0.38 ms without, 0.22 ms with (MLP 784-512-512-10,
/// batch 128: 2.83 vs 2.64 ms). Call it first thing in `main`, before anything uses rayon;
/// later calls (and a pool already built) leave the pool as it is.
pub fn join_thread_pool() {
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
}

/// A constant as a candle tensor (f32).
pub fn constant_tensor(c: &Constant, device: &Device) -> Result<Tensor> {
    let v = match &c.data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    };
    Ok(Tensor::from_vec(v, c.dims.as_slice(), device)?)
}

/// A candle tensor as an f32 constant.
pub fn tensor_constant(t: &Tensor) -> Result<Constant> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Constant::f32(t.dims().to_vec(), v))
}

impl Executor {
    /// Prepare a graph for execution on the CPU, in f32.
    pub fn new(graph: &Graph) -> Result<Self> {
        Self::with_dtype(graph, DType::F32)
    }

    /// The same in another float type (f64 for numerical checks).
    pub fn with_dtype(graph: &Graph, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::unsupported(format!(
                "executing in {dtype:?} (f32 or f64)"
            )));
        }
        let device = Device::Cpu;
        let mut params = BTreeMap::new();
        for (name, c) in &graph.params {
            params.insert(
                name.clone(),
                Var::from_tensor(&constant_tensor(c, &device)?.to_dtype(dtype)?)?,
            );
        }
        let outputs: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
        // The last reader of every value, and how many nodes read it.
        let mut last: HashMap<&str, usize> = HashMap::new();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            for v in n.data_inputs() {
                if last.insert(v, i) != Some(i) {
                    *readers.entry(v).or_default() += 1;
                }
            }
        }
        let mut frees = vec![vec![]; graph.nodes.len()];
        for (&v, &i) in &last {
            if !outputs.iter().any(|o| o == v) && !params.contains_key(v) {
                frees[i].push(v.to_string());
            }
        }
        let fused = (0..graph.nodes.len())
            .map(|i| {
                let (n, next) = (&graph.nodes[i], graph.nodes.get(i + 1));
                let same_shapes = || {
                    let d = n.data_inputs();
                    d.len() == 2 && graph.shapes.get(&d[0]) == graph.shapes.get(&d[1])
                };
                let add = matches!(
                    n.op,
                    Op::Binary {
                        kind: BinaryKind::Add,
                        legacy_axis: None
                    }
                ) && same_shapes();
                (add || matches!(
                    n.op,
                    Op::Gemm { .. } | Op::Conv(_) | Op::ConvTranspose(_) | Op::BatchNorm { .. }
                )) && next.is_some_and(|r| {
                    matches!(r.op, Op::Relu) && r.data_inputs() == [n.outputs[0].as_str()]
                }) && readers.get(n.outputs[0].as_str()) == Some(&1)
                    && !outputs.contains(&n.outputs[0])
            })
            .collect();
        Ok(Executor {
            fused,
            nodes: graph.nodes.clone(),
            shapes: graph.shapes.clone(),
            inputs: graph.inputs.iter().map(|v| v.name.clone()).collect(),
            outputs,
            params,
            frees,
            labels: (0..graph.nodes.len()).map(|i| graph.node_ref(i)).collect(),
            device,
            dtype,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters, by ONNX name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Static shape of a graph input.
    pub fn input_shape(&self, i: usize) -> &Shape {
        &self.shapes[&self.inputs[i]]
    }

    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The gradients of the parameters in `grads` (from `loss.backward()`), by parameter name.
    pub fn grads_by_name(
        &self,
        grads: &candle_core::backprop::GradStore,
    ) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .filter_map(|(k, v)| grads.get(v.as_tensor()).map(|t| (k.clone(), t.clone())))
            .collect()
    }

    /// Copy the current parameter values into `graph` (for export after training).
    pub fn write_back(&self, graph: &mut Graph) -> Result<()> {
        for (name, var) in &self.params {
            graph
                .params
                .insert(name.clone(), tensor_constant(var.as_tensor())?);
        }
        Ok(())
    }

    /// Run the graph (inference mode) on one tensor per graph input; returns one tensor per
    /// graph output.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.forward_mode(inputs, Mode::Eval)
    }

    /// The same in training mode (see [`Mode::Train`]): the running statistics of every
    /// BatchNormalization move.
    pub fn forward_train(&self, inputs: &[Tensor], seed: u64) -> Result<Vec<Tensor>> {
        self.forward_mode(inputs, Mode::Train { seed })
    }

    fn forward_mode(&self, inputs: &[Tensor], mode: Mode) -> Result<Vec<Tensor>> {
        self.run(inputs, mode, None)
    }

    /// Run the graph; with `tape`, each node's backward pass is recorded there
    /// ([`tape::Tape`]) and the outputs track nothing.
    fn run(
        &self,
        inputs: &[Tensor],
        mode: Mode,
        mut tape: Option<&mut Vec<tape::Step>>,
    ) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::usage(format!(
                "the model takes {} inputs, {} were given",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let mut batch = None;
        let mut env: HashMap<&str, Tensor> = HashMap::new();
        for (name, t) in self.inputs.iter().zip(inputs) {
            let s = &self.shapes[name];
            let b = s.batch.map(|a| t.dims().get(a).copied().unwrap_or(0));
            let fits = t.rank() == s.rank()
                && (0..s.rank()).all(|i| Some(i) == s.batch || t.dims()[i] == s.dims[i]);
            if !fits || b == Some(0) {
                return Err(Error::shape(format!(
                    "input '{name}' has shape {:?}, the model expects {s}",
                    t.dims()
                )));
            }
            if let Some(b) = b {
                match batch {
                    Some(x) if x != b => {
                        return Err(Error::shape(format!(
                            "inputs disagree on the batch size ({x} vs {b})"
                        )))
                    }
                    _ => batch = Some(b),
                }
            }
            env.insert(name, t.to_dtype(self.dtype)?);
        }
        for (name, v) in &self.params {
            env.insert(name, v.as_tensor().clone());
        }
        let batch = batch.unwrap_or(1);
        for (i, node) in self.nodes.iter().enumerate() {
            let args: Vec<&Tensor> = node
                .data_inputs()
                .iter()
                .map(|n| &env[n.as_str()])
                .collect();
            let expect = self.shapes[&node.outputs[0]].with_batch(batch);
            let relu = self.fused[i];
            let fused_in = i > 0 && self.fused[i - 1];
            let y = match tape.as_deref_mut() {
                Some(steps) => {
                    self.tape_node(i, &args, &expect, relu, fused_in, mode)
                        .map(|(y, step)| {
                            steps.push(step);
                            y
                        })
                }
                None if fused_in => Ok(args[0].clone()),
                None => self
                    .run_node(i, &args, &expect, relu, mode, kernels::Rec::Graph)
                    .map(|(y, _)| y),
            };
            let y = y
                .and_then(|y| {
                    if y.dims() == expect.as_slice() {
                        Ok(y)
                    } else {
                        Err(Error::exec(format!(
                            "computed shape {:?}, expected {:?}",
                            y.dims(),
                            expect
                        )))
                    }
                })
                .map_err(|e| e.at_node(self.labels[i].clone()))?;
            for f in &self.frees[i] {
                env.remove(f.as_str());
            }
            env.insert(&node.outputs[0], y);
        }
        self.outputs
            .iter()
            .map(|o| Ok(env[o.as_str()].clone()))
            .collect()
    }

    /// Update the running statistics of BatchNormalization node `node` from a batch's mean
    /// and biased variance over `m` values per channel: running = running * momentum +
    /// batch * (1 - momentum) (ONNX), with the unbiased variance var * m / (m - 1) for the
    /// running variance, as PyTorch does.
    fn update_running(
        &self,
        node: &Node,
        mean: &[f64],
        var: &[f64],
        momentum: f64,
        m: usize,
    ) -> Result<()> {
        let unbias = m as f64 / (m as f64 - 1.0);
        for (name, batch, k) in [(&node.inputs[3], mean, 1.0), (&node.inputs[4], var, unbias)] {
            let Some(v) = self.params.get(name) else {
                return Err(Error::unsupported(format!(
                    "BatchNormalization in training mode with a running statistic '{name}' that is not a parameter"
                )));
            };
            let old = v
                .as_tensor()
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let new: Vec<f64> = old
                .iter()
                .zip(batch)
                .map(|(o, b)| o * momentum + b * k * (1.0 - momentum))
                .collect();
            let t = Tensor::from_vec(new, v.dims(), &self.device)?.to_dtype(self.dtype)?;
            v.set(&t)?;
        }
        Ok(())
    }

    /// Run node `i`; with `relu` (see `fused`) a ReLU is applied to its result. The nodes
    /// that run one of ecc's kernels record it as `rec` says (with [`kernels::Rec::Tape`],
    /// the call's backward pass comes back with the output); the others run candle's ops,
    /// which record in candle's graph when their inputs track.
    fn run_node(
        &self,
        i: usize,
        x: &[&Tensor],
        out_dims: &[usize],
        relu: bool,
        mode: Mode,
        rec: kernels::Rec,
    ) -> Result<kernels::Call> {
        let node = &self.nodes[i];
        let n_out = out_dims.last().copied().unwrap_or(0);
        let train = mode != Mode::Eval;
        let y = match &node.op {
            Op::BatchNorm { epsilon, momentum } if train => {
                let m = x[0].elem_count() / x[0].dims()[1].max(1);
                if m < 2 {
                    return Err(Error::shape(format!(
                        "BatchNormalization in training mode needs more than one value per channel (input {:?})",
                        x[0].dims()
                    )));
                }
                let (call, mean, var) =
                    kernels::batch_norm_train_rec(x[0], x[1], x[2], *epsilon as f64, relu, rec)?;
                self.update_running(node, &mean, &var, *momentum as f64, m)?;
                return Ok(call);
            }
            Op::Dropout { ratio } if *ratio > 0.0 && train => {
                use rand::{Rng, SeedableRng};
                let Mode::Train { seed } = mode else {
                    unreachable!("guarded by `train`")
                };
                let mixed = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mixed);
                let keep = 1.0 / (1.0 - *ratio as f64);
                let mask: Vec<f64> = (0..x[0].elem_count())
                    .map(|_| if rng.gen::<f32>() < *ratio { 0.0 } else { keep })
                    .collect();
                let mask =
                    Tensor::from_vec(mask, x[0].dims(), &self.device)?.to_dtype(self.dtype)?;
                (x[0] * mask)?
            }
            // The common dense layer: one fused kernel (matmul, bias, ReLU).
            Op::Gemm {
                alpha,
                beta,
                trans_a: false,
                trans_b,
            } if *alpha == 1.0
                && x[0].rank() == 2
                && x.get(2).is_none_or(|c| {
                    *beta == 1.0
                        && c.elem_count() == n_out
                        && c.dims().iter().rev().skip(1).all(|&d| d == 1)
                }) =>
            {
                let b = x.get(2).map(|c| c.flatten_all()).transpose()?;
                return kernels::dense_rec(x[0], x[1], b.as_ref(), *trans_b, relu, rec);
            }
            Op::Binary {
                kind: BinaryKind::Add,
                ..
            } if relu => return kernels::add_relu_rec(x[0], x[1], rec),
            op if relu && !matches!(op, Op::Conv(_) | Op::ConvTranspose(_)) => {
                let (y, _) = self.run_node(i, x, out_dims, false, mode, kernels::Rec::Graph)?;
                y.relu()?
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let a = if *trans_a { x[0].t()? } else { x[0].clone() };
                let b = if *trans_b { x[1].t()? } else { x[1].clone() };
                let mut y = a.matmul(&b)?;
                if *alpha != 1.0 {
                    y = (y * *alpha as f64)?;
                }
                if let Some(c) = x.get(2) {
                    let c = if *beta != 1.0 {
                        (*c * *beta as f64)?
                    } else {
                        (*c).clone()
                    };
                    y = y.broadcast_add(&c)?;
                }
                y
            }
            Op::MatMul => matmul(x[0], x[1])?,
            Op::Binary { kind, legacy_axis } => {
                let b = match legacy_axis {
                    Some(axis) => {
                        let mut d = x[1].dims().to_vec();
                        d.resize(x[0].rank() - axis, 1);
                        x[1].reshape(d)?
                    }
                    None => x[1].clone(),
                };
                match kind {
                    BinaryKind::Add => x[0].broadcast_add(&b)?,
                    BinaryKind::Sub => x[0].broadcast_sub(&b)?,
                    BinaryKind::Mul => x[0].broadcast_mul(&b)?,
                    BinaryKind::Div => x[0].broadcast_div(&b)?,
                }
            }
            Op::Sum | Op::Mean => {
                let mut y = x[0].clone();
                for t in &x[1..] {
                    y = y.broadcast_add(t)?;
                }
                match node.op {
                    Op::Mean => (y / x.len() as f64)?,
                    _ => y,
                }
            }
            Op::Max | Op::Min => {
                let mut y = x[0].clone();
                for t in &x[1..] {
                    y = match node.op {
                        Op::Max => y.broadcast_maximum(t)?,
                        _ => y.broadcast_minimum(t)?,
                    };
                }
                y
            }
            Op::Conv(a) => return kernels::conv_rec(x[0], x[1], x.get(2).copied(), a, relu, rec),
            Op::ConvTranspose(a) => {
                return kernels::conv_transpose_rec(x[0], x[1], x.get(2).copied(), a, relu, rec)
            }
            Op::MaxPool(p) => return kernels::pool_rec(x[0], p, None, rec),
            Op::Resize(r) => kernels::resize(x[0], r)?,
            Op::AveragePool {
                pool,
                count_include_pad,
            } => return kernels::pool_rec(x[0], pool, Some(*count_include_pad), rec),
            Op::GlobalAveragePool => x[0].flatten_from(2)?.mean_keepdim(2)?.reshape(out_dims)?,
            Op::GlobalMaxPool => x[0].flatten_from(2)?.max_keepdim(2)?.reshape(out_dims)?,
            Op::Relu => x[0].relu()?,
            Op::LeakyRelu { alpha } => (x[0].relu()? - (x[0].neg()?.relu()? * *alpha as f64)?)?,
            Op::PRelu => {
                let (t, s) = (x[0], x[1]);
                let s = if s.rank() == 1 && t.rank() > 2 && s.dims()[0] == t.dims()[1] {
                    let mut d = vec![1; t.rank() - 1];
                    d[0] = s.dims()[0];
                    s.reshape(d)?
                } else {
                    s.clone()
                };
                (t.relu()? - t.neg()?.relu()?.broadcast_mul(&s)?)?
            }
            Op::Clip { min, max } => {
                let mut y = x[0].clone();
                if min.is_finite() {
                    y = y.maximum(*min as f64)?;
                }
                if max.is_finite() {
                    y = y.minimum(*max as f64)?;
                }
                y
            }
            Op::Sigmoid => x[0].neg()?.exp()?.affine(1.0, 1.0)?.recip()?,
            Op::Tanh => x[0].tanh()?,
            Op::HardSigmoid { alpha, beta } => hard_sigmoid(x[0], *alpha as f64, *beta as f64)?,
            Op::HardSwish => (x[0] * hard_sigmoid(x[0], 1.0 / 6.0, 0.5)?)?,
            Op::Gelu { tanh } => gelu(x[0], *tanh)?,
            Op::Softmax { axis, legacy } => softmax(x[0], *axis, *legacy, false)?,
            Op::LogSoftmax { axis, legacy } => softmax(x[0], *axis, *legacy, true)?,
            Op::BatchNorm { epsilon, .. } => {
                let (t, scale, bias, mean, var) = (x[0], x[1], x[2], x[3], x[4]);
                let mut d = vec![1; t.rank()];
                d[1] = t.dims()[1];
                let inv = (var.flatten_all()? + *epsilon as f64)?.sqrt()?.recip()?;
                let k = (scale.flatten_all()? * inv)?.reshape(d.as_slice())?;
                let mean = mean.reshape(d.as_slice())?;
                t.broadcast_sub(&mean)?
                    .broadcast_mul(&k)?
                    .broadcast_add(&bias.reshape(d.as_slice())?)?
            }
            Op::InstanceNorm { epsilon } => {
                let (t, scale, bias) = (x[0], x[1], x[2]);
                let flat = t.flatten_from(2)?;
                let mean = flat.mean_keepdim(2)?;
                let centred = flat.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim(2)?;
                let y = centred.broadcast_div(&(var + *epsilon as f64)?.sqrt()?)?;
                let d = [t.dims()[1], 1];
                y.broadcast_mul(&scale.reshape(d.as_slice())?)?
                    .broadcast_add(&bias.reshape(d.as_slice())?)?
                    .reshape(t.dims())?
            }
            Op::Dropout { .. } | Op::Identity => x[0].clone(),
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                x[0].reshape(out_dims)?
            }
            Op::Transpose { perm } => x[0].permute(perm.as_slice())?.contiguous()?,
            Op::Pad { pads, mode } => pad(x[0], pads, *mode)?,
            Op::Slice {
                axes,
                starts,
                steps,
                lens,
            } => {
                let mut y = x[0].clone();
                for k in 0..axes.len() {
                    let (a, s, n) = (axes[k], starts[k], lens[k]);
                    y = if steps[k] == 1 {
                        y.narrow(a, s, n)?
                    } else {
                        let at: Vec<u32> = (0..n as i64)
                            .map(|j| (s as i64 + j * steps[k]) as u32)
                            .collect();
                        y.index_select(&Tensor::new(at, y.device())?, a)?
                    };
                }
                y.contiguous()?
            }
            Op::Concat { axis } => {
                let a = crate::ir::norm_axis(*axis, x[0].rank())?;
                Tensor::cat(x, a)?
            }
            Op::Lrn {
                alpha,
                beta,
                bias,
                size,
            } => lrn(x[0], *alpha, *beta, *bias, *size)?,
            Op::Gather { axis, indices, .. } => {
                let at: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
                x[0].contiguous()?
                    .index_select(&Tensor::new(at, x[0].device())?, *axis)?
                    .reshape(out_dims)?
            }
            Op::ScatterNd { indices, idx_dims } => scatter_nd(x[0], x[1], indices, idx_dims)?,
        };
        Ok((y, None))
    }
}

/// ScatterND without reduction (indices in range, none repeated, as import checks): the data
/// with the positions of `indices` cleared, plus the updates added there. Both steps have
/// candle's backward: the data's gradient is zero at those positions, the updates' is the
/// gradient gathered there.
fn scatter_nd(
    data: &Tensor,
    updates: &Tensor,
    indices: &[usize],
    idx_dims: &[usize],
) -> Result<Tensor> {
    let dims = data.dims();
    let k = idx_dims.last().copied().unwrap_or(1).max(1);
    let slice: usize = dims[k..].iter().product();
    let mut pos = Vec::with_capacity(indices.len() / k * slice);
    for t in indices.chunks(k) {
        let base = t.iter().zip(dims).fold(0usize, |acc, (&i, &d)| acc * d + i) * slice;
        pos.extend((base..base + slice).map(|p| p as u32));
    }
    let mut keep = vec![1f64; data.elem_count()];
    for &p in &pos {
        keep[p as usize] = 0.0;
    }
    let keep = Tensor::from_vec(keep, data.elem_count(), data.device())?.to_dtype(data.dtype())?;
    let pos = Tensor::new(pos, data.device())?;
    let cleared = data.flatten_all()?.mul(&keep)?;
    Ok(cleared
        .index_add(&pos, &updates.flatten_all()?, 0)?
        .reshape(dims)?)
}

/// ONNX Pad on every axis in turn: negative pads crop (narrow); positive ones add constants
/// (concatenated) or, for reflect, edge and wrap, the values at the mirrored, nearest or
/// wrapped-around positions of the cropped axis (one gather).
fn pad(x: &Tensor, pads: &[i64], mode: crate::ir::PadMode) -> Result<Tensor> {
    use crate::ir::PadMode;
    let r = x.rank();
    let mut y = x.clone();
    for a in 0..r {
        let (b, e) = (pads[a], pads[a + r]);
        if b == 0 && e == 0 {
            continue;
        }
        let (cb, ce) = ((-b).max(0) as usize, (-e).max(0) as usize);
        if cb > 0 || ce > 0 {
            let d = y.dims()[a];
            y = y.narrow(a, cb, d - cb - ce)?;
        }
        let (pb, pe) = (b.max(0) as usize, e.max(0) as usize);
        if pb == 0 && pe == 0 {
            continue;
        }
        y = match mode {
            PadMode::Constant(v) => {
                let block = |n: usize| -> Result<Tensor> {
                    let mut d = y.dims().to_vec();
                    d[a] = n;
                    Ok((Tensor::zeros(d, y.dtype(), y.device())? + v as f64)?)
                };
                let mut parts = vec![];
                if pb > 0 {
                    parts.push(block(pb)?);
                }
                parts.push(y.clone());
                if pe > 0 {
                    parts.push(block(pe)?);
                }
                Tensor::cat(&parts, a)?
            }
            _ => {
                let n = y.dims()[a] as i64;
                let at: Vec<u32> = (-(pb as i64)..n + pe as i64)
                    .map(|j| {
                        (match mode {
                            PadMode::Edge => j.clamp(0, n - 1),
                            PadMode::Wrap => j.rem_euclid(n),
                            // Reflect: mirrored about the edge values (not repeated), again
                            // and again past the far edge, as numpy does.
                            _ if n == 1 => 0,
                            _ => {
                                let k = j.rem_euclid(2 * (n - 1));
                                if k >= n {
                                    2 * (n - 1) - k
                                } else {
                                    k
                                }
                            }
                        }) as u32
                    })
                    .collect();
                y.index_select(&Tensor::new(at, y.device())?, a)?
            }
        };
    }
    Ok(y.contiguous()?)
}

/// HardSigmoid: max(0, min(1, alpha x + beta)).
fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> Result<Tensor> {
    Ok(x.affine(alpha, beta)?.maximum(0.0)?.minimum(1.0)?)
}

/// Gelu as ONNX defines it, x/2 (1 + erf(x/√2)), or with `tanh`,
/// x/2 (1 + tanh(√(2/π) (x + 0.044715 x³))); composed of ops whose derivatives autograd
/// has in closed form, so the gradient is exact (candle's fused gelu ops differentiate with
/// six-digit constants).
fn gelu(x: &Tensor, tanh: bool) -> Result<Tensor> {
    let inner = if tanh {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        (x + ((x.sqr()? * x)? * 0.044715)?)?
            .affine(k, 0.0)?
            .tanh()?
    } else {
        x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()?
    };
    Ok((x * inner.affine(0.5, 0.5)?)?)
}

/// ONNX MatMul: numpy semantics, 1-D operands promoted and squeezed back.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a2 = if a.rank() == 1 {
        a.unsqueeze(0)?
    } else {
        a.clone()
    };
    let b2 = if b.rank() == 1 {
        b.unsqueeze(1)?
    } else {
        b.clone()
    };
    let mut y = if a2.rank() == 2 && b2.rank() == 2 {
        a2.matmul(&b2)?
    } else {
        a2.broadcast_matmul(&b2)?
    };
    if b.rank() == 1 {
        y = y.squeeze(D::Minus1)?;
    }
    if a.rank() == 1 {
        let r = y.rank();
        y = y.squeeze(if b.rank() == 1 { r - 1 } else { r - 2 })?;
    }
    Ok(y)
}

/// Softmax or log-softmax along `axis`; `legacy` (opset < 13) coerces to 2-D first.
fn softmax(x: &Tensor, axis: i64, legacy: bool, log: bool) -> Result<Tensor> {
    let a = crate::ir::norm_axis(axis, x.rank())?;
    let (t, dim) = if legacy {
        let outer: usize = x.dims()[..a].iter().product();
        (x.reshape((outer, x.elem_count() / outer.max(1)))?, 1)
    } else {
        (x.clone(), a)
    };
    let shifted = t.broadcast_sub(&t.max_keepdim(dim)?)?;
    let e = shifted.exp()?;
    let s = e.sum_keepdim(dim)?;
    let y = if log {
        shifted.broadcast_sub(&s.log()?)?
    } else {
        e.broadcast_div(&s)?
    };
    Ok(y.reshape(x.dims())?)
}

/// Local response normalization across channels (ONNX LRN).
fn lrn(x: &Tensor, alpha: f32, beta: f32, bias: f32, size: usize) -> Result<Tensor> {
    let c = x.dims()[1];
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let sq = x.sqr()?.pad_with_zeros(1, before, after)?;
    let mut sum = sq.narrow(1, 0, c)?;
    for k in 1..size {
        sum = (sum + sq.narrow(1, k, c)?)?;
    }
    let den = (sum * (alpha as f64 / size as f64))?
        .affine(1.0, bias as f64)?
        .powf(beta as f64)?;
    Ok((x / den)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropout: the identity in inference; in training a seeded mask (the same for the same
    /// seed, another for another), each kept value scaled by 1 / (1 - ratio), gradients
    /// through the same mask.
    #[test]
    fn dropout_drops_in_training_only_with_seeded_masks() {
        let g = crate::import::load_bytes(
            &crate::export::to_bytes(&{
                let mut g =
                    crate::zoo::build(&crate::zoo::Spec::parse("mlp:400-3").unwrap(), 0, true)
                        .unwrap();
                // input -> Dropout(0.25) -> fc1
                let fc = g.nodes[0].clone();
                let drop = Node {
                    name: "drop".into(),
                    op: Op::Dropout { ratio: 0.25 },
                    inputs: vec![fc.inputs[0].clone()],
                    outputs: vec!["dropped".into()],
                };
                g.nodes[0].inputs[0] = "dropped".into();
                g.nodes.insert(0, drop);
                g
            })
            .unwrap(),
            &Default::default(),
        )
        .unwrap();
        // Look at the Dropout's output itself.
        let mut g = g;
        g.outputs[0].name = "dropped".into();
        let ex = Executor::new(&g).unwrap();
        let x = Tensor::ones((5, 400), DType::F32, &Device::Cpu).unwrap();
        let vals = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(vals(&ex.forward(std::slice::from_ref(&x)).unwrap()[0])
            .iter()
            .all(|&v| v == 1.0));
        let a = vals(&ex.forward_train(std::slice::from_ref(&x), 7).unwrap()[0]);
        let b = vals(&ex.forward_train(std::slice::from_ref(&x), 7).unwrap()[0]);
        let c = vals(&ex.forward_train(std::slice::from_ref(&x), 8).unwrap()[0]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6),
            "{:?}",
            &a[..8]
        );
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped {dropped}");
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let y = &ex.forward_train(&[xv.as_tensor().clone()], 7).unwrap()[0];
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            vals(g.get(xv.as_tensor()).unwrap()),
            a,
            "the gradient goes through the mask"
        );
    }

    #[test]
    fn softmax_semantics_before_and_from_opset_13() {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        // Opset 13: along axis 1 only.
        let y = softmax(&x, 1, false, false).unwrap();
        let s = y
            .sum(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6), "{s:?}");
        // Before 13: the input is coerced to (2, 12) and normalized over all 12.
        let y = softmax(&x, 1, true, false).unwrap();
        let s = y
            .reshape((2, 12))
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6), "{s:?}");
        let per_axis = y
            .sum(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(per_axis.iter().any(|v| (v - 1.0).abs() > 1e-2));
        // LogSoftmax is the log of Softmax.
        let l = softmax(&x, -1, false, true).unwrap().exp().unwrap();
        let p = softmax(&x, -1, false, false).unwrap();
        let d = (l - p)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6);
    }
}
