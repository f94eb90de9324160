//! Optimizers: one trait, SGD (momentum, weight decay) and EC-SGD (the EC pass's update
//! programs for the parameters inside blocks, SGD for the rest, spec §5 step 5).

use crate::ec::program::ProgramRunner;
use crate::ec::step::StepConfig;
use crate::error::Result;
use candle_core::{Tensor, Var};
use std::collections::{BTreeMap, HashMap, HashSet};

pub trait Optimizer: Send {
    fn name(&self) -> &'static str;
    /// One step with learning rate `lr`; returns how many R the guard replaced (EC-SGD).
    fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<usize>;
    /// The state to checkpoint (momentum buffers), by key.
    fn state(&self) -> HashMap<String, Tensor>;
    /// Restore what `state` returned.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// SGD with momentum and weight decay on the parameters in `trainable`: one fused in-place
/// pass per tensor (`sgd_in_place`).
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    trainable: HashSet<String>,
    buf: HashMap<String, Vec<f32>>,
}

impl Sgd {
    pub fn new(trainable: HashSet<String>, momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            weight_decay,
            trainable,
            buf: HashMap::new(),
        }
    }

    /// The step; with `gamma`, Path-SGD's: only the parameters with a gamma move, by
    /// g / (|gamma| + 1e-12) instead of g.
    fn update(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        gamma: Option<&HashMap<String, Tensor>>,
        lr: f64,
    ) -> Result<usize> {
        for (name, var) in params {
            if !self.trainable.contains(name) {
                continue;
            }
            let Some(g) = grads.get(name) else { continue };
            let y = match gamma {
                None => None,
                Some(gamma) => match gamma.get(name) {
                    Some(y) => Some(y),
                    None => continue,
                },
            };
            if !self.buf.contains_key(name) {
                self.buf.insert(name.clone(), vec![]);
            }
            let m = self.buf.get_mut(name).expect("inserted above");
            crate::exec::kernels::update::sgd_in_place(
                var.as_tensor(),
                g,
                y,
                m,
                lr as f32,
                self.momentum as f32,
                self.weight_decay as f32,
            )?;
        }
        Ok(0)
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }
    fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<usize> {
        self.update(params, grads, None, lr)
    }
    fn state(&self) -> HashMap<String, Tensor> {
        self.buf
            .iter()
            .filter_map(|(k, v)| {
                Tensor::new(v.as_slice(), &candle_core::Device::Cpu)
                    .ok()
                    .map(|t| (format!("sgd/{k}"), t))
            })
            .collect()
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.buf.clear();
        for (k, v) in state {
            if let Some(name) = k.strip_prefix("sgd/") {
                self.buf
                    .insert(name.to_string(), v.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }
}

/// EC-SGD: update programs for block parameters, SGD for every other trainable one.
pub struct EcSgd {
    runner: ProgramRunner,
    rest: Sgd,
    pub cfg: StepConfig,
}

impl EcSgd {
    pub fn new(runner: ProgramRunner, rest: Sgd, cfg: StepConfig) -> Self {
        EcSgd { runner, rest, cfg }
    }
}

impl Optimizer for EcSgd {
    fn name(&self) -> &'static str {
        "ec-sgd"
    }
    fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<usize> {
        let cfg = StepConfig { lr, ..self.cfg };
        let guarded = self.runner.step(params, grads, &cfg)?;
        self.rest.step(params, grads, lr)?;
        Ok(guarded)
    }
    fn state(&self) -> HashMap<String, Tensor> {
        let mut s = self.rest.state();
        s.extend(self.runner.state());
        s
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.rest.load_state(state)?;
        self.runner.load_state(state)
    }
}

/// Path-SGD (spec §7): w_e <- w_e - lr * g_e / gamma_e, with gamma_e the sum over the
/// paths through e of the product of the squares of the other weights. gamma is computed
/// by autograd: the model with every activation replaced by the identity (max pooling by
/// average pooling, an approximation), run on an all-ones input with the squared weights
/// u = w^2; the sum of its outputs is the path regularizer psi(u), and gamma = dpsi/du.
pub struct PathSgd {
    sgd: Sgd,
    squared: crate::exec::Executor,
    ones: Tensor,
}

impl PathSgd {
    /// `tg` is the training (logits) graph.
    pub fn new(tg: &crate::ir::Graph, sgd: Sgd) -> Result<Self> {
        use crate::ir::Op;
        let mut sq = tg.clone();
        for n in &mut sq.nodes {
            n.op = match &n.op {
                Op::Relu
                | Op::LeakyRelu { .. }
                | Op::Clip { .. }
                | Op::Dropout { .. }
                | Op::Identity => Op::Identity,
                Op::PRelu => {
                    n.inputs.truncate(1);
                    Op::Identity
                }
                Op::MaxPool(p) => Op::AveragePool {
                    pool: p.clone(),
                    count_include_pad: false,
                },
                Op::GlobalMaxPool => Op::GlobalAveragePool,
                Op::Sigmoid
                | Op::Tanh
                | Op::Softmax { .. }
                | Op::LogSoftmax { .. }
                | Op::Lrn { .. }
                | Op::BatchNorm { .. } => {
                    return Err(crate::Error::unsupported(format!(
                        "Path-SGD through {} (ecc computes it for ReLU-type networks)",
                        n.op.onnx_name()
                    )))
                }
                other => other.clone(),
            };
        }
        let squared = crate::exec::Executor::new(&sq)?;
        let dims = sq.shapes[&sq.inputs[0].name].with_batch(1);
        let ones = Tensor::ones(dims, candle_core::DType::F32, squared.device())?;
        Ok(PathSgd { sgd, squared, ones })
    }
}

impl Optimizer for PathSgd {
    fn name(&self) -> &'static str {
        "path-sgd"
    }
    fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<usize> {
        for (k, u) in self.squared.params() {
            crate::exec::kernels::square_into(u.as_tensor(), params[k].as_tensor())?;
        }
        let mut psi = Tensor::zeros((), candle_core::DType::F32, self.ones.device())?;
        for y in self.squared.forward(std::slice::from_ref(&self.ones))? {
            psi = (psi + y.sum_all()?)?;
        }
        let store = psi.backward()?;
        let gamma: HashMap<String, Tensor> = self
            .squared
            .params()
            .iter()
            .filter_map(|(k, u)| store.get(u.as_tensor()).map(|y| (k.clone(), y.clone())))
            .collect();
        // g / (|gamma| + 1e-12) in SGD's pass: the tiny floor keeps parameters on no path
        // (gamma = 0) from dividing by zero.
        self.sgd.update(params, grads, Some(&gamma), lr)
    }
    fn state(&self) -> HashMap<String, Tensor> {
        self.sgd.state()
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.sgd.load_state(state)
    }
}
