//! Update programs: one EC-SGD step of a block (spec §5) as a short program of whole-tensor
//! operations (gathers, per-chain reductions, elementwise formulas), with a readable text
//! form, run with candle on the executor's `Var`s. [`super::step::EcStep`] is the f64
//! definition the programs are tested against.
//!
//! Per weight layer the program needs: the chain of every scalar (per output channel before
//! the free layer, per input position after it; none in it), the scalars held constant
//! (designated weights; V in the free layer), and for biases before the free layer the chain
//! of each output.

use super::skeleton::skeleton;
use super::EcPlan;
use crate::analysis::Analysis;
use crate::error::Result;
use crate::exec::kernels::update::{chain_sums, fused_update, with_slice, UpdateTarget};
use crate::ir::Graph;
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

/// Where a layer sits relative to the free layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Before,
    Free,
    After,
}

#[derive(Debug, Clone)]
pub struct LayerProgram {
    pub label: String,
    pub weight: String,
    pub bias: Option<String>,
    pub region: Region,
    pub dims: Vec<usize>,
    /// The axis the chain index runs along (output axis before s, input axis after s).
    pub chain_axis: usize,
    /// Chain of each position along `chain_axis` (empty in the free layer).
    pub chain: Vec<u32>,
    /// Flat indices held constant.
    pub fixed: Vec<usize>,
    /// Chain of each bias entry (before the free layer only).
    pub bias_chain: Option<Vec<u32>>,
}

#[derive(Debug, Clone)]
pub struct UpdateProgram {
    pub block: usize,
    pub chains: usize,
    pub free_weight: String,
    /// V_j as flat indices of the free layer's weight.
    pub v: Vec<usize>,
    pub layers: Vec<LayerProgram>,
}

/// The programs of a plan's blocks.
pub fn programs(g: &Graph, a: &Analysis, plan: &EcPlan) -> Vec<UpdateProgram> {
    plan.blocks
        .iter()
        .enumerate()
        .map(|(bi, b)| {
            let sk = skeleton(g, a, b);
            let mut fixed: Vec<Vec<usize>> = vec![vec![]; b.layers.len()];
            for (l, ds) in b.designated.iter().enumerate() {
                for d in ds {
                    fixed[if d.incoming { l } else { l + 1 }].push(d.weight.index);
                }
            }
            fixed[b.free].extend(sk.v.iter().copied());
            let layers = sk
                .geo
                .iter()
                .enumerate()
                .map(|(l, geo)| {
                    let region = match l.cmp(&b.free) {
                        std::cmp::Ordering::Less => Region::Before,
                        std::cmp::Ordering::Equal => Region::Free,
                        std::cmp::Ordering::Greater => Region::After,
                    };
                    let (chain_axis, chain) = match region {
                        Region::Before => (
                            geo.out_axis,
                            sk.chains[l].iter().map(|&c| c as u32).collect(),
                        ),
                        Region::Free => (geo.out_axis, vec![]),
                        Region::After => {
                            let per = geo.in_channels * geo.in_block;
                            let len = geo.dims[geo.in_axis];
                            (
                                geo.in_axis,
                                (0..len)
                                    .map(|pos| sk.chains[l - 1][(pos % per) / geo.in_block] as u32)
                                    .collect(),
                            )
                        }
                    };
                    let mut f = fixed[l].clone();
                    f.sort_unstable();
                    LayerProgram {
                        label: g.node_label(b.layers[l]),
                        weight: geo.weight.clone(),
                        bias: geo.bias.clone(),
                        region,
                        dims: geo.dims.clone(),
                        chain_axis,
                        chain,
                        fixed: f,
                        bias_chain: (region == Region::Before && geo.bias.is_some())
                            .then(|| sk.chains[l].iter().map(|&c| c as u32).collect()),
                    }
                })
                .collect();
            UpdateProgram {
                block: bi,
                chains: sk.v.len(),
                free_weight: sk.geo[b.free].weight.clone(),
                v: sk.v.clone(),
                layers,
            }
        })
        .collect()
}

impl UpdateProgram {
    /// The readable form.
    pub fn text(&self) -> String {
        let mut s = format!(
            "program block {}: {} chains, free layer weight {}\n",
            self.block, self.chains, self.free_weight
        );
        s += &format!(
            "  V   := gather({}, {} skeleton scalars)\n",
            self.free_weight,
            self.v.len()
        );
        s += &format!("  gV  := gather(∂{}, same scalars)\n", self.free_weight);
        s += "  σ   := 0 per chain\n";
        let dims = |d: &[usize]| {
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        for l in &self.layers {
            let axis = if l.chain_axis == 0 { "row" } else { "column" };
            match l.region {
                Region::Before | Region::After => {
                    let by = if l.region == Region::Before {
                        "output unit"
                    } else {
                        "input unit"
                    };
                    let side = if l.region == Region::Before {
                        "before"
                    } else {
                        "after"
                    };
                    s += &format!(
                        "  # {} [{}] {side} the free layer: chain by {by} ({axis} axis {})\n",
                        l.weight,
                        dims(&l.dims),
                        l.chain_axis
                    );
                    s += &format!(
                        "  dp  := ∂{w} / V[chain]              (0 on {} designated scalars)\n",
                        l.fixed.len(),
                        w = l.weight
                    );
                    s += &format!("  σ   += sum_by_chain({w} ⊙ ∂{w})\n", w = l.weight);
                }
                Region::Free => {
                    s += &format!("  # {} [{}] the free layer\n", l.weight, dims(&l.dims));
                    s += &format!(
                        "  dp  := ∂{}                           (0 on the {} V scalars)\n",
                        l.weight,
                        l.fixed.len()
                    );
                }
            }
            if let Some(b) = &l.bias {
                if l.bias_chain.is_some() {
                    s += &format!("  dp  := ∂{b} / V[chain];  σ += sum_by_chain({b} ⊙ ∂{b})\n");
                } else {
                    s += &format!("  dp  := ∂{b}\n");
                }
            }
        }
        s += "  dV  := (V ⊙ gV − σ) / V\n";
        s += "  mV  := μ·mV + dV\n";
        s += "  R   := guard(1 − η·mV / V, floor)      # R below the floor (or NaN) is the floor, counted\n";
        for l in &self.layers {
            let p = if l.region == Region::Free {
                "w"
            } else {
                "w ⊙ V[chain]"
            };
            s += &format!("  {}: m := μ·m + dp + λ·({p});  ", l.weight);
            s += match l.region {
                Region::Free => "w := w − η·m except the V scalars;  V scalars := V ⊙ R\n",
                _ => "w := (w − η·m / V[chain]) / R[chain] except the designated\n",
            };
            if let Some(b) = &l.bias {
                s += &match l.bias_chain {
                    Some(_) => format!("  {b}: m := μ·m + dp + λ·(b ⊙ V[chain]);  b := (b − η·m / V[chain]) / R[chain]\n"),
                    None => format!("  {b}: m := μ·m + dp + λ·b;  b := b − η·m\n"),
                };
            }
        }
        s
    }
}

/// Runs update programs on the executor's parameters: one fused, multi-threaded pass over
/// each parameter tensor, in place.
pub struct ProgramRunner {
    programs: Vec<UpdateProgram>,
    targets: Vec<Vec<UpdateTarget>>,
    momentum: HashMap<String, Vec<f32>>,
    mv: Vec<Vec<f32>>,
    /// Steps in which the guard replaced some R.
    pub guarded_steps: usize,
}

impl ProgramRunner {
    pub fn new(programs: Vec<UpdateProgram>) -> Result<Self> {
        let mut targets = vec![];
        for p in &programs {
            let mut ts = vec![];
            for l in &p.layers {
                let fixed = l.fixed.clone();
                ts.push(UpdateTarget {
                    name: l.weight.clone(),
                    chain: l.chain.clone(),
                    inner: l.dims[l.chain_axis + 1..].iter().product(),
                    fixed,
                    v: if l.region == Region::Free {
                        p.v.clone()
                    } else {
                        vec![]
                    },
                });
                if let Some(b) = &l.bias {
                    ts.push(UpdateTarget {
                        name: b.clone(),
                        chain: l.bias_chain.clone().unwrap_or_default(),
                        inner: 1,
                        fixed: vec![],
                        v: vec![],
                    });
                }
            }
            targets.push(ts);
        }
        let mv = programs.iter().map(|p| vec![0f32; p.chains]).collect();
        Ok(ProgramRunner {
            programs,
            targets,
            momentum: HashMap::new(),
            mv,
            guarded_steps: 0,
        })
    }

    pub fn programs(&self) -> &[UpdateProgram] {
        &self.programs
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
        for (bi, (p, ts)) in self.programs.iter().zip(&self.targets).enumerate() {
            let v: Vec<f32> = with_slice(params[&p.free_weight].as_tensor(), |w| {
                p.v.iter().map(|&i| w[i]).collect()
            })?;
            let gv: Vec<f32> = with_slice(&grads[&p.free_weight], |g| {
                p.v.iter().map(|&i| g[i]).collect()
            })?;
            // ICR: sigma per chain over the chained scalars that move.
            let mut sigma = vec![0f64; p.chains];
            for t in ts.iter().filter(|t| !t.chain.is_empty()) {
                let part = chain_sums(t, params[&t.name].as_tensor(), &grads[&t.name], p.chains)?;
                sigma.iter_mut().zip(part).for_each(|(x, y)| *x += y);
            }
            let mut r = vec![0f32; p.chains];
            for c in 0..p.chains {
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
