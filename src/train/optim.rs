//! Optimizers: one trait, SGD (momentum, weight decay) and EC-SGD (the EC pass's update
//! programs for the parameters inside blocks, SGD for the rest, spec §5 step 5).

use crate::ec::program::ProgramRunner;
use crate::ec::step::StepConfig;
use crate::error::Result;
use candle_core::{Tensor, Var};
use std::collections::{BTreeMap, HashMap, HashSet};

pub trait Optimizer {
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

/// SGD with momentum and weight decay on the parameters in `trainable`.
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    trainable: HashSet<String>,
    buf: HashMap<String, Tensor>,
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
        for (name, var) in params {
            if !self.trainable.contains(name) {
                continue;
            }
            let Some(g) = grads.get(name) else { continue };
            let w = var.as_tensor();
            let d = if self.weight_decay != 0.0 {
                (g + (w * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let d = if self.momentum != 0.0 {
                let m = match self.buf.get(name) {
                    Some(m) => ((m * self.momentum)? + d)?,
                    None => d,
                };
                self.buf.insert(name.clone(), m.clone());
                m
            } else {
                d
            };
            var.set(&(w - (d * lr)?)?)?;
        }
        Ok(0)
    }
    fn state(&self) -> HashMap<String, Tensor> {
        self.buf
            .iter()
            .map(|(k, v)| (format!("sgd/{k}"), v.clone()))
            .collect()
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.buf = state
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("sgd/").map(|k| (k.to_string(), v.clone())))
            .collect();
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
    pub fn guarded_steps(&self) -> usize {
        self.runner.guarded_steps
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
