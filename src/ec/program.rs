//! Update programs: one EC-SGD step of a block (spec §5) as a short program of whole-tensor
//! operations (gathers, per-chain reductions, elementwise formulas), with a readable text
//! form, run on the executor's `Var`s. [`super::step::EcStep`] is the f64 definition the
//! programs are tested against; both read the block's [`Basis`].
//!
//! Per tensor the program needs what the basis gives: the chain of every scalar (one index
//! per position along one axis; none in the free region), the scalars held constant
//! (designated ones and V), and where the V scalars are.

use super::basis::{Basis, Block, BlockKind, Region, TensorRole};
use crate::error::Result;
use crate::exec::kernels::update::{chain_sums, fused_update, with_slice, UpdateTarget};
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

fn dims(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// The readable program of block `index`.
pub fn text(index: usize, b: &Block) -> String {
    let mut s = match &b.kind {
        BlockKind::Chain { .. } => {
            let free = &b.v[0].param;
            let mut s = format!(
                "program block {index}: {} chains, free layer weight {free}\n",
                b.chains()
            );
            s += &format!("  V   := gather({free}, {} skeleton scalars)\n", b.v.len());
            s += &format!("  gV  := gather(∂{free}, same scalars)\n");
            s
        }
        BlockKind::Star => {
            let mut tensors: Vec<&str> = b.v.iter().map(|v| v.param.as_str()).collect();
            tensors.dedup();
            let mut s = format!(
                "program block {index}: {} chains (star: in-edges free, out-edges chained by input unit)\n",
                b.chains()
            );
            s += &format!(
                "  V   := gather({}, one scalar per chain)\n",
                tensors.join(", ")
            );
            s += "  gV  := gather(∂ of the same scalars)\n";
            s
        }
    };
    s += "  σ   := 0 per chain\n";
    for l in &b.layers {
        let w = &l.weight;
        let axis = if w.axis == 0 { "row" } else { "column" };
        let held = w.fixed.len() - w.v.len();
        match l.region {
            Region::Before | Region::After => {
                let (by, side) = if l.region == Region::Before {
                    ("output unit", "before")
                } else {
                    ("input unit", "after")
                };
                s += &format!(
                    "  # {} [{}] {side} the free layer: chain by {by} ({axis} axis {})\n",
                    w.param,
                    dims(&w.dims),
                    w.axis
                );
                s += &format!(
                    "  dp  := ∂{p} / V[chain]              (0 on {held} designated scalars)\n",
                    p = w.param
                );
                s += &format!("  σ   += sum_by_chain({p} ⊙ ∂{p})\n", p = w.param);
            }
            Region::Free => {
                s += &format!("  # {} [{}] the free layer\n", w.param, dims(&w.dims));
                s += &format!(
                    "  dp  := ∂{}                           (0 on the {} V scalars)\n",
                    w.param,
                    w.v.len()
                );
            }
        }
        if let Some(bias) = &l.bias {
            let b = &bias.param;
            if bias.chain.is_empty() {
                s += &format!("  dp  := ∂{b}\n");
            } else {
                s += &format!("  dp  := ∂{b} / V[chain];  σ += sum_by_chain({b} ⊙ ∂{b})\n");
            }
        }
    }
    s += "  dV  := (V ⊙ gV − σ) / V\n";
    s += "  mV  := μ·mV + dV\n";
    s += "  R   := guard(1 − η·mV / V, floor)      # R below the floor (or NaN) is the floor, counted\n";
    for l in &b.layers {
        let w = &l.weight.param;
        let p = if l.region == Region::Free {
            "w"
        } else {
            "w ⊙ V[chain]"
        };
        s += &format!("  {w}: m := μ·m + dp + λ·({p});  ");
        s += match (l.region, l.weight.v.is_empty()) {
            (Region::Free, false) => "w := w − η·m except the V scalars;  V scalars := V ⊙ R\n",
            (Region::Free, true) => "w := w − η·m\n",
            _ => "w := (w − η·m / V[chain]) / R[chain] except the designated\n",
        };
        if let Some(bias) = &l.bias {
            let b = &bias.param;
            s += &if bias.chain.is_empty() {
                format!("  {b}: m := μ·m + dp + λ·b;  b := b − η·m\n")
            } else {
                format!("  {b}: m := μ·m + dp + λ·(b ⊙ V[chain]);  b := (b − η·m / V[chain]) / R[chain]\n")
            };
        }
    }
    s
}

fn target(t: &TensorRole) -> UpdateTarget {
    UpdateTarget {
        name: t.param.clone(),
        chain: t.chain.clone(),
        inner: t.inner,
        fixed: t.fixed.clone(),
        v: t.v.clone(),
    }
}

/// Runs update programs on the executor's parameters: one fused, multi-threaded pass over
/// each parameter tensor, in place.
pub struct ProgramRunner {
    basis: Basis,
    targets: Vec<Vec<UpdateTarget>>,
    momentum: HashMap<String, Vec<f32>>,
    mv: Vec<Vec<f32>>,
    /// Steps in which the guard replaced some R.
    pub guarded_steps: usize,
}

impl ProgramRunner {
    pub fn new(basis: &Basis) -> Result<Self> {
        let targets = basis
            .blocks
            .iter()
            .map(|b| b.tensors().map(target).collect())
            .collect();
        let mv = basis
            .blocks
            .iter()
            .map(|b| vec![0f32; b.chains()])
            .collect();
        Ok(ProgramRunner {
            basis: basis.clone(),
            targets,
            momentum: HashMap::new(),
            mv,
            guarded_steps: 0,
        })
    }

    pub fn basis(&self) -> &Basis {
        &self.basis
    }

    /// Momentum state for a checkpoint: `ec/m/<param>` and `ec/mv/<block>`, and the count of
    /// guarded steps as `ec/guarded`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut s = HashMap::new();
        for (k, v) in &self.momentum {
            if let Ok(t) = Tensor::new(v.as_slice(), &Device::Cpu) {
                s.insert(format!("ec/m/{k}"), t);
            }
        }
        for (i, v) in self.mv.iter().enumerate() {
            if let Ok(t) = Tensor::new(v.as_slice(), &Device::Cpu) {
                s.insert(format!("ec/mv/{i}"), t);
            }
        }
        if let Ok(t) = Tensor::new(&[self.guarded_steps as u32], &Device::Cpu) {
            s.insert("ec/guarded".into(), t);
        }
        s
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.momentum.clear();
        for (k, v) in state {
            if let Some(name) = k.strip_prefix("ec/m/") {
                self.momentum
                    .insert(name.to_string(), v.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        for (i, mv) in self.mv.iter_mut().enumerate() {
            if let Some(t) = state.get(&format!("ec/mv/{i}")) {
                *mv = t.to_vec1::<f32>()?;
            }
        }
        if let Some(t) = state.get("ec/guarded") {
            self.guarded_steps = t.to_vec1::<u32>()?[0] as usize;
        }
        Ok(())
    }

    /// One EC-SGD step of every block. `grads` by parameter name. Returns the number of
    /// chains whose R the guard replaced.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        cfg: &super::step::StepConfig,
    ) -> Result<usize> {
        let (lr, mu, wd) = (cfg.lr as f32, cfg.momentum as f32, cfg.weight_decay as f32);
        let mut guarded = 0usize;
        for (bi, (b, ts)) in self.basis.blocks.iter().zip(&self.targets).enumerate() {
            let chains = b.chains();
            let mut v = Vec::with_capacity(chains);
            let mut gv = Vec::with_capacity(chains);
            for s in &b.v {
                v.push(with_slice(params[&s.param].as_tensor(), |w| w[s.index])?);
                gv.push(with_slice(&grads[&s.param], |g| g[s.index])?);
            }
            // ICR: sigma per chain over the chained scalars that move.
            let mut sigma = vec![0f64; chains];
            for t in ts.iter().filter(|t| !t.chain.is_empty()) {
                let part = chain_sums(t, params[&t.name].as_tensor(), &grads[&t.name], chains)?;
                sigma.iter_mut().zip(part).for_each(|(x, y)| *x += y);
            }
            let mut r = vec![0f32; chains];
            for c in 0..chains {
                let dv = ((v[c] as f64 * gv[c] as f64 - sigma[c]) / v[c] as f64) as f32;
                let m = &mut self.mv[bi][c];
                *m = mu * *m + dv;
                let raw = 1.0 - lr * *m / v[c];
                r[c] = if raw >= cfg.r_floor as f32 {
                    raw
                } else {
                    guarded += 1;
                    cfg.r_floor as f32
                };
            }
            // Momentum, decay and weight allocation: one pass per tensor, in place.
            for t in ts {
                let g = grads[&t.name].contiguous()?;
                let n = g.elem_count();
                if !self.momentum.contains_key(&t.name) {
                    self.momentum.insert(t.name.clone(), vec![0.0; n]);
                }
                let m = self.momentum.get_mut(&t.name).expect("inserted above");
                fused_update(params[&t.name].as_tensor(), t, &g, m, &v, &r, lr, mu, wd)?;
            }
        }
        if guarded > 0 {
            self.guarded_steps += 1;
        }
        Ok(guarded)
    }
}
