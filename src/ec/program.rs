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
use crate::exec::kernels::update::{chain_sums, fused_update, with_slice, Factors, UpdateTarget};
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
        BlockKind::Dag => {
            let longest = b.monomials.iter().map(Vec::len).max().unwrap_or(0);
            let mut s = format!(
                "program block {index}: DAG, {} chains through {} V's (up to {longest} per chain), every tensor chained by input unit\n",
                b.chains(),
                b.v.len()
            );
            s += "  V   := gather(one scalar per V);  gV := gather(∂ of the same)\n";
            s += "  P   := Π V over each chain;  q := V ⊙ P[chain of V]\n";
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
    s += if b.kind == BlockKind::Dag {
        "  T   := V ⊙ gV − Σ σ over the chains through V − Σ T of the later V's on it;  dq := T / q\n"
    } else {
        "  dV  := (V ⊙ gV − σ) / V\n"
    };
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

/// The V's a block holds in one tensor: the tensor, and (V index, flat index) pairs.
type VsOfTensor = (String, Vec<(usize, usize)>);

/// Runs update programs on the executor's parameters: one fused, multi-threaded pass over
/// each parameter tensor, in place.
pub struct ProgramRunner {
    basis: Basis,
    targets: Vec<Vec<UpdateTarget>>,
    /// Per block: how its V's hang together, and its V's grouped by tensor.
    links: Vec<super::basis::VLinks>,
    v_by_param: Vec<Vec<VsOfTensor>>,
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
        let mv = basis.blocks.iter().map(|b| vec![0f32; b.v.len()]).collect();
        let links = basis.blocks.iter().map(|b| b.v_links()).collect();
        // The V's of each block grouped by tensor, read with one slice access per tensor.
        let v_by_param = basis
            .blocks
            .iter()
            .map(|b| {
                let mut g: Vec<VsOfTensor> = vec![];
                for (k, s) in b.v.iter().enumerate() {
                    match g.iter_mut().find(|(p, _)| *p == s.param) {
                        Some((_, ks)) => ks.push((k, s.index)),
                        None => g.push((s.param.clone(), vec![(k, s.index)])),
                    }
                }
                g
            })
            .collect();
        Ok(ProgramRunner {
            basis: basis.clone(),
            targets,
            links,
            v_by_param,
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
            let nv = b.v.len();
            let (mut v, mut gv) = (vec![0f64; nv], vec![0f64; nv]);
            for (param, ks) in &self.v_by_param[bi] {
                with_slice(params[param].as_tensor(), |w| {
                    ks.iter().for_each(|&(k, i)| v[k] = w[i] as f64)
                })?;
                with_slice(&grads[param], |g| {
                    ks.iter().for_each(|&(k, i)| gv[k] = g[i] as f64)
                })?;
            }
            let pc = b.chain_values(&v, 1.0);
            let links = &self.links[bi];
            let vchain = &links.chain_of_v;
            // ICR: sigma per chain over the chained scalars that move, then T_k per V from
            // the last to the first (docs/ec-dag.md §5; (V·gV − σ) with one V per chain).
            let mut sigma = vec![0f64; chains];
            for t in ts.iter().filter(|t| !t.chain.is_empty()) {
                let part = chain_sums(t, params[&t.name].as_tensor(), &grads[&t.name], chains)?;
                sigma.iter_mut().zip(part).for_each(|(x, y)| *x += y);
            }
            let q: Vec<f64> = (0..nv)
                .map(|k| v[k] * vchain[k].map_or(1.0, |c| pc[c]))
                .collect();
            let mut tk = vec![0f64; nv];
            for k in (0..nv).rev() {
                let mut x = v[k] * gv[k];
                for &c in &links.through[k] {
                    x -= sigma[c];
                }
                for &d in &links.dependents[k] {
                    x -= tk[d];
                }
                tk[k] = x;
            }
            let mut rv = vec![0f64; nv];
            for k in 0..nv {
                let dq = (tk[k] / q[k]) as f32;
                let m = &mut self.mv[bi][k];
                *m = mu * *m + dq;
                let raw = 1.0 - (lr * *m) as f64 / q[k];
                let rho = if raw >= cfg.r_floor {
                    raw
                } else {
                    guarded += 1;
                    cfg.r_floor
                };
                let rp: f64 = vchain[k].map_or(1.0, |c| {
                    b.monomials[c].iter().map(|&j| rv[j as usize]).product()
                });
                rv[k] = rho / rp;
            }
            let rc = b.chain_values(&rv, 1.0);
            let to32 = |x: &[f64]| x.iter().map(|&y| y as f32).collect::<Vec<f32>>();
            let (pc32, rc32, rv32) = (to32(&pc), to32(&rc), to32(&rv));
            let f = Factors {
                v: &pc32,
                r: &rc32,
                rv: &rv32,
            };
            // Momentum, decay and weight allocation: one pass per tensor, in place.
            for t in ts {
                let g = grads[&t.name].contiguous()?;
                let n = g.elem_count();
                if !self.momentum.contains_key(&t.name) {
                    self.momentum.insert(t.name.clone(), vec![0.0; n]);
                }
                let m = self.momentum.get_mut(&t.name).expect("inserted above");
                fused_update(params[&t.name].as_tensor(), t, &g, m, &f, lr, mu, wd)?;
            }
        }
        if guarded > 0 {
            self.guarded_steps += 1;
        }
        Ok(guarded)
    }
}
