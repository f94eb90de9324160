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
    /// Trained without weight decay (the model's `ir::META_NO_DECAY`).
    no_decay: HashSet<String>,
    buf: HashMap<String, Vec<f32>>,
}

impl Sgd {
    pub fn new(trainable: HashSet<String>, momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            weight_decay,
            trainable,
            no_decay: HashSet::new(),
            buf: HashMap::new(),
        }
    }

    /// The same, with the parameters in `names` trained without weight decay.
    pub fn without_decay(mut self, names: HashSet<String>) -> Self {
        self.no_decay = names;
        self
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
                if self.no_decay.contains(name) {
                    0.0
                } else {
                    self.weight_decay as f32
                },
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
        save_buffers(self.buf.iter().map(|(k, m)| (k.as_str(), m.as_slice())))
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.buf = load_buffers(state, |_| true)?;
        Ok(())
    }
}

/// Momentum buffers by parameter as checkpoint state, keys `sgd/<parameter>`.
fn save_buffers<'a>(buf: impl Iterator<Item = (&'a str, &'a [f32])>) -> HashMap<String, Tensor> {
    buf.filter_map(|(k, v)| {
        Tensor::new(v, &candle_core::Device::Cpu)
            .ok()
            .map(|t| (format!("sgd/{k}"), t))
    })
    .collect()
}

/// The momentum buffers of the parameters `keep` accepts from checkpoint state.
fn load_buffers(
    state: &HashMap<String, Tensor>,
    keep: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut buf = HashMap::new();
    for (k, v) in state {
        if let Some(name) = k.strip_prefix("sgd/").filter(|n| keep(n)) {
            buf.insert(name.to_string(), v.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(buf)
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

/// Balanced SGD (docs/balanced-sgd.md): SGD (momentum, weight decay) on the balanced
/// representative of the class, then one damped balancing iteration
/// ([`crate::ec::balance`]) that moves the parameters and the momentum buffers (as
/// displacements: by the same factors) back towards the balanced section. The start is
/// balanced by `train::optimizer_for`, so the run is a function of the class.
pub struct BalancedSgd {
    plan: crate::ec::balance::Balance,
    /// SGD for the trainable parameters the plan does not rescale; its momentum and weight
    /// decay are the run's.
    rest: Sgd,
    /// Momentum buffers of the rescaled parameters, by their index in the plan.
    buf: Vec<Vec<f32>>,
    /// The groups' squared norms (I, O) of the parameters as the last step left them
    /// (measured in its pass; after a resume, measured again, which gives the same values).
    norms: Option<(Vec<f64>, Vec<f64>)>,
}

impl BalancedSgd {
    pub fn new(
        plan: crate::ec::balance::Balance,
        trainable: HashSet<String>,
        momentum: f64,
        weight_decay: f64,
    ) -> Self {
        let mine: HashSet<String> = plan.params().map(str::to_string).collect();
        BalancedSgd {
            rest: Sgd::new(
                trainable.difference(&mine).cloned().collect(),
                momentum,
                weight_decay,
            ),
            buf: vec![vec![]; mine.len()],
            plan,
            norms: None,
        }
    }

    /// One pass over the rescaled parameters: with `step` = (the groups' factors,
    /// gradients, lr), SGD and the rescaling by the factors; without, only their norms.
    /// Returns the norms of the result.
    fn pass(
        &mut self,
        params: &BTreeMap<String, Var>,
        step: Option<(&[f64], &HashMap<String, Tensor>, f64)>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        use crate::exec::kernels::update::{balanced_pass, with_slice, with_slice_mut, SgdArgs};
        use rayon::prelude::*;
        let (mut inn, mut out) = self.plan.zeros();
        let c = step.map(|(c, _, _)| c);
        let (mu, wd) = (self.rest.momentum as f32, self.rest.weight_decay as f32);
        let plan = &self.plan;
        let names: Vec<&str> = plan.params().collect();
        // The tensors side by side on the threads (each tensor's pass is its own, so the
        // bits do not depend on the threads); their squares are added in the plan's order.
        let res: Vec<Result<(Vec<f64>, Vec<f64>)>> = self
            .buf
            .par_iter_mut()
            .zip(names.par_iter())
            .enumerate()
            .map(|(i, (m, name))| {
                let mut res = (vec![], vec![]);
                let Some(var) = params.get(*name) else {
                    return Ok(res);
                };
                let f = plan.factors(i, c);
                let grad = step
                    .filter(|_| plan.trains(i))
                    .and_then(|(_, grads, lr)| grads.get(*name).map(|g| (g, lr)));
                match grad {
                    Some((g, lr)) => {
                        let g = g.contiguous()?;
                        if m.len() != g.elem_count() {
                            *m = vec![0.0; g.elem_count()];
                        }
                        with_slice(&g, |g| {
                            with_slice_mut(var.as_tensor(), |w| {
                                let sgd = SgdArgs {
                                    m,
                                    g,
                                    lr: lr as f32,
                                    mu,
                                    wd,
                                };
                                res = balanced_pass(w, Some(sgd), &f.rows, &f.cols, f.count);
                            })
                        })??;
                    }
                    None => with_slice_mut(var.as_tensor(), |w| {
                        res = balanced_pass(w, None, &f.rows, &f.cols, f.count)
                    })?,
                }
                Ok(res)
            })
            .collect();
        for (i, r) in res.into_iter().enumerate() {
            let (rows, cols) = r?;
            plan.add_squares(i, &rows, &cols, (&mut inn, &mut out));
        }
        Ok((inn, out))
    }
}

impl Optimizer for BalancedSgd {
    fn name(&self) -> &'static str {
        "balanced-sgd"
    }
    /// SGD and one damped balancing iteration, in one pass per tensor: the iteration's
    /// factors come from the norms the last step left (docs/balanced-sgd.md).
    fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<usize> {
        let (inn, out) = match self.norms.take() {
            Some(n) => n,
            None => self.pass(params, None)?,
        };
        let (c, _) = crate::ec::balance::Balance::step_of(&inn, &out);
        self.norms = Some(self.pass(params, Some((&c, grads, lr)))?);
        self.rest.step(params, grads, lr)?;
        Ok(0)
    }
    fn state(&self) -> HashMap<String, Tensor> {
        let mut s = self.rest.state();
        let mine = self
            .plan
            .params()
            .zip(&self.buf)
            .filter(|(_, m)| !m.is_empty());
        s.extend(save_buffers(mine.map(|(k, m)| (k, m.as_slice()))));
        s
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.norms = None;
        self.rest.load_state(state)?;
        let mut loaded = load_buffers(state, |n| self.plan.params().any(|p| p == n))?;
        self.buf = self
            .plan
            .params()
            .map(|n| loaded.remove(n).unwrap_or_default())
            .collect();
        Ok(())
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
                | Op::HardSigmoid { .. }
                | Op::HardSwish
                | Op::Gelu { .. }
                | Op::InstanceNorm { .. }
                | Op::Max
                | Op::Min
                | Op::Softmax { .. }
                | Op::LogSoftmax { .. }
                | Op::Lrn { .. }
                | Op::Gather { .. }
                | Op::ScatterNd { .. }
                | Op::BatchNorm { .. } => {
                    return Err(crate::Error::unsupported(format!(
                        "Path-SGD through {} (ecc computes it for ReLU-type networks)",
                        n.op.onnx_name()
                    )))
                }
                Op::Pad {
                    mode: crate::ir::PadMode::Constant(v),
                    ..
                } if *v != 0.0 => {
                    return Err(crate::Error::unsupported(
                        "Path-SGD through a Pad with a non-zero constant",
                    ))
                }
                // Its negative coefficients would enter the path sums with their signs.
                Op::Resize(r) if matches!(r.interp, crate::ir::Interp::Cubic(_)) => {
                    return Err(crate::Error::unsupported(
                        "Path-SGD through a cubic Resize (negative interpolation coefficients)",
                    ))
                }
                other => other.clone(),
            };
        }
        let squared = crate::exec::Executor::new(&sq)?;
        let dims = sq.shapes[&sq.inputs[0].name].with_batch(1);
        let ones = Tensor::ones(dims, candle_core::DType::F32, squared.device())?;
        Ok(PathSgd { sgd, squared, ones })
    }

    /// gamma of every parameter on some path, by name, at the weights `params`.
    pub fn gamma(&self, params: &BTreeMap<String, Var>) -> Result<HashMap<String, Tensor>> {
        for (k, u) in self.squared.params() {
            crate::exec::kernels::square_into(u.as_tensor(), params[k].as_tensor())?;
        }
        let mut psi = Tensor::zeros((), candle_core::DType::F32, self.ones.device())?;
        for y in self.squared.forward(std::slice::from_ref(&self.ones))? {
            psi = (psi + y.sum_all()?)?;
        }
        let store = psi.backward()?;
        Ok(self
            .squared
            .params()
            .iter()
            .filter_map(|(k, u)| store.get(u.as_tensor()).map(|y| (k.clone(), y.clone())))
            .collect())
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
        let gamma = self.gamma(params)?;
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
