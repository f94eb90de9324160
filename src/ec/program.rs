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
use crate::ir::Graph;
use candle_core::{DType, Device, Tensor, Var};
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

/// Tensors a program needs, built once.
struct Prepared {
    v: Tensor,
    layers: Vec<PreparedLayer>,
}

struct PreparedLayer {
    chain: Option<Tensor>,
    /// Shape with 1s except along the chain axis.
    bshape: Vec<usize>,
    /// 1 on scalars that move, 0 on constant ones.
    mask: Tensor,
    bias_chain: Option<Tensor>,
}

/// Runs update programs on the executor's parameters.
pub struct ProgramRunner {
    programs: Vec<UpdateProgram>,
    prepared: Vec<Prepared>,
    momentum: HashMap<String, Tensor>,
    mv: Vec<Tensor>,
    /// Steps in which the guard replaced some R.
    pub guarded_steps: usize,
}

fn idx(v: &[u32], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), v.len(), dev)?)
}

impl ProgramRunner {
    pub fn new(programs: Vec<UpdateProgram>, dev: &Device) -> Result<Self> {
        let mut prepared = vec![];
        for p in &programs {
            let v = idx(&p.v.iter().map(|&i| i as u32).collect::<Vec<_>>(), dev)?;
            let mut layers = vec![];
            for l in &p.layers {
                let n: usize = l.dims.iter().product();
                let mut m = vec![1f32; n];
                for &i in &l.fixed {
                    m[i] = 0.0;
                }
                let mut bshape = vec![1; l.dims.len()];
                bshape[l.chain_axis] = l.dims[l.chain_axis];
                layers.push(PreparedLayer {
                    chain: if l.chain.is_empty() {
                        None
                    } else {
                        Some(idx(&l.chain, dev)?)
                    },
                    bshape,
                    mask: Tensor::from_vec(m, l.dims.as_slice(), dev)?,
                    bias_chain: l.bias_chain.as_ref().map(|c| idx(c, dev)).transpose()?,
                });
            }
            prepared.push(Prepared { v, layers });
        }
        let mv = programs
            .iter()
            .map(|p| Tensor::zeros(p.chains, DType::F32, dev))
            .collect::<candle_core::Result<_>>()?;
        Ok(ProgramRunner {
            programs,
            prepared,
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
        let mut s: HashMap<String, Tensor> = self
            .momentum
            .iter()
            .map(|(k, v)| (format!("ec/m/{k}"), v.clone()))
            .collect();
        for (i, v) in self.mv.iter().enumerate() {
            s.insert(format!("ec/mv/{i}"), v.clone());
        }
        if let Ok(t) = Tensor::new(&[self.guarded_steps as u32], &Device::Cpu) {
            s.insert("ec/guarded".into(), t);
        }
        s
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.momentum = state
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("ec/m/").map(|k| (k.to_string(), v.clone())))
            .collect();
        for (i, mv) in self.mv.iter_mut().enumerate() {
            if let Some(t) = state.get(&format!("ec/mv/{i}")) {
                *mv = t.clone();
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
        let (lr, mu, wd) = (cfg.lr, cfg.momentum, cfg.weight_decay);
        let mut guarded = 0usize;
        for (bi, (p, prep)) in self.programs.iter().zip(&self.prepared).enumerate() {
            let wf = params[&p.free_weight].as_tensor().flatten_all()?;
            let v = wf.index_select(&prep.v, 0)?;
            let gv = grads[&p.free_weight]
                .flatten_all()?
                .index_select(&prep.v, 0)?;
            let mut sigma = Tensor::zeros(p.chains, DType::F32, v.device())?;
            // ICR.
            let mut dps = vec![];
            for (l, pl) in p.layers.iter().zip(&prep.layers) {
                let w = params[&l.weight].as_tensor();
                let g = (&grads[&l.weight] * &pl.mask)?;
                let dp = match &pl.chain {
                    Some(c) => {
                        let vb = v.index_select(c, 0)?.reshape(pl.bshape.as_slice())?;
                        let others: Vec<usize> =
                            (0..l.dims.len()).filter(|&d| d != l.chain_axis).collect();
                        let wg = (w * &g)?.sum(others)?;
                        sigma = sigma.index_add(c, &wg, 0)?;
                        g.broadcast_div(&vb)?
                    }
                    None => g,
                };
                let dpb = match (&l.bias, &pl.bias_chain) {
                    (Some(b), Some(c)) => {
                        let (bw, bg) = (params[b].as_tensor(), &grads[b]);
                        sigma = sigma.index_add(c, &(bw * bg)?, 0)?;
                        Some((bg / v.index_select(c, 0)?)?)
                    }
                    (Some(b), None) => Some(grads[b].clone()),
                    _ => None,
                };
                dps.push((dp, dpb));
            }
            let dv = ((&v * &gv)? - &sigma)?.div(&v)?;
            let mv = ((&self.mv[bi] * mu)? + dv)?;
            let raw = (1.0 - ((&mv / &v)? * lr)?)?;
            let ok = raw.ge(cfg.r_floor)?;
            guarded += p.chains - ok.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
            let r = ok.where_cond(&raw, &raw.ones_like()?.affine(cfg.r_floor, 0.0)?)?;
            self.mv[bi] = mv;
            // Momentum, decay and weight allocation.
            for ((l, pl), (dp, dpb)) in p.layers.iter().zip(&prep.layers).zip(dps) {
                let w = params[&l.weight].as_tensor();
                let (vb, rb) = match &pl.chain {
                    Some(c) => (
                        Some(v.index_select(c, 0)?.reshape(pl.bshape.as_slice())?),
                        Some(r.index_select(c, 0)?.reshape(pl.bshape.as_slice())?),
                    ),
                    None => (None, None),
                };
                let pv = match &vb {
                    Some(vb) => w.broadcast_mul(vb)?,
                    None => w.clone(),
                };
                let m0 = self
                    .momentum
                    .entry(l.weight.clone())
                    .or_insert(w.zeros_like()?);
                let m = (((&*m0 * mu)? + dp)? + ((pv * wd)? * &pl.mask)?)?;
                let step = (&m * lr)?;
                let moved = match (&vb, &rb) {
                    (Some(vb), Some(rb)) => (w - step.broadcast_div(vb)?)?.broadcast_div(rb)?,
                    _ => (w - step)?,
                };
                let keep = (1.0 - &pl.mask)?;
                let mut new = ((moved * &pl.mask)? + (w * keep)?)?;
                if l.region == Region::Free {
                    let flat = new.flatten_all()?;
                    let delta = (&v * (&r - 1.0)?)?;
                    new = flat
                        .index_add(&prep.v, &delta, 0)?
                        .reshape(l.dims.as_slice())?;
                }
                *m0 = m;
                params[&l.weight].set(&new)?;
                if let (Some(b), Some(dpb)) = (&l.bias, dpb) {
                    let bw = params[b].as_tensor();
                    let chain = pl.bias_chain.as_ref();
                    let (bv, br) = match chain {
                        Some(c) => (Some(v.index_select(c, 0)?), Some(r.index_select(c, 0)?)),
                        None => (None, None),
                    };
                    let pb = match &bv {
                        Some(bv) => (bw * bv)?,
                        None => bw.clone(),
                    };
                    let mb0 = self.momentum.entry(b.clone()).or_insert(bw.zeros_like()?);
                    let mb = (((&*mb0 * mu)? + dpb)? + (pb * wd)?)?;
                    let sb = (&mb * lr)?;
                    let nb = match (&bv, &br) {
                        (Some(bv), Some(br)) => ((bw - sb.div(bv)?)?).div(br)?,
                        _ => (bw - sb)?,
                    };
                    *mb0 = mb;
                    params[b].set(&nb)?;
                }
            }
        }
        if guarded > 0 {
            self.guarded_steps += 1;
        }
        Ok(guarded)
    }
}
