//! Numeric soundness of the rules: each rule's two sides are evaluated on random tensors,
//! random positive scales and random parameters (in f64), and must agree. A rule that
//! does not hold fails here, whatever file it comes from.
//!
//! Conventions of the evaluator: data tensors are (2, 4, 3, 3) with channels on axis 1, or
//! (2, 4) under dense layers; every scale vector has 4 entries; layers map 4 channels to 4;
//! conv kernels are 3x3 with padding 1 and the group (leaf `gN`) is drawn from {1, 2, 4};
//! batch-norm uses eps 1e-5 in inference form and 0 with batch statistics (where the
//! invariance is exact). Conditions pick their leaf (`zero` -> 0, `inf`, `ninf`).

use super::lang::Ec;
use super::rules::{CondKind, Rule};
use egg::{ENodeOrVar, Language, Pattern, Var};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const C: usize = 4;

#[derive(Debug, Clone, PartialEq)]
struct T {
    dims: Vec<usize>,
    v: Vec<f64>,
    /// Channel axis and layout: channel c holds positions o*C*block + c*block + i.
    chan: usize,
    outer: usize,
    block: usize,
    /// For a concat result: the middle input's channel offset.
    place: Option<usize>,
}

impl T {
    fn new(dims: Vec<usize>, v: Vec<f64>) -> T {
        T {
            dims,
            v,
            chan: 1,
            outer: 1,
            block: 1,
            place: None,
        }
    }
    fn map(&self, f: impl Fn(f64) -> f64) -> T {
        T {
            v: self.v.iter().map(|&x| f(x)).collect(),
            ..self.clone()
        }
    }
    fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.dims.len()];
        for i in (0..self.dims.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.dims[i + 1];
        }
        s
    }
    /// Index along `axis` of flat element i.
    fn at(&self, i: usize, axis: usize) -> usize {
        (i / self.strides()[axis]) % self.dims[axis]
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    T(T),
    Vec(Vec<f64>),
    Spread(Vec<f64>),
    Place(Vec<f64>),
    PScaled(Box<Val>, Vec<f64>),
    Unscaled(Box<Val>, Vec<f64>),
    IScaled(Box<Val>, Vec<f64>),
    Leaf(String),
    None,
}

/// What a variable stands for, from its position.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Data(usize),
    Scale,
    /// A parameter of the given shape kind.
    Param(PKind),
    Group,
    Bound,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PKind {
    Matrix,
    Bias,
    ConvW,
    /// A group-1 ConvTranspose weight (in, out, 3, 3).
    ConvTW,
    Channel4d,
    PosChannel4d,
    Stat,
    PosStat,
}

struct Env {
    rng: rand_chacha::ChaCha8Rng,
    vars: HashMap<Var, Val>,
    conds: HashMap<Var, CondKind>,
    group: usize,
}

type R<X> = Result<X, String>;

fn randn(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

impl Env {
    fn make(&mut self, var: Var, role: Role) -> Val {
        if let Some(v) = self.vars.get(&var) {
            return v.clone();
        }
        let rng = &mut self.rng;
        let v = match role {
            Role::Data(4) => Val::T(T::new(vec![2, C, 3, 3], randn(rng, 2 * C * 9))),
            Role::Data(_) => Val::T(T::new(vec![2, C], randn(rng, 2 * C))),
            Role::Scale => Val::Vec((0..C).map(|_| rng.gen_range(0.25f64..4.0)).collect()),
            Role::Group => Val::Leaf(format!("g{}", self.group)),
            Role::Bound => match self.conds.get(&var) {
                Some(k) => Val::Leaf(k.leaf().to_string()),
                None => Val::Leaf(format!("{}", rng.gen_range(-1.0..1.0))),
            },
            Role::Param(k) => Val::T(match k {
                PKind::Matrix => T::new(vec![C, C], randn(rng, C * C)),
                PKind::Bias | PKind::Stat => T::new(vec![C], randn(rng, C)),
                PKind::PosStat => {
                    T::new(vec![C], (0..C).map(|_| rng.gen_range(0.5..2.0)).collect())
                }
                PKind::ConvW => T::new(
                    vec![C, C / self.group, 3, 3],
                    randn(rng, C * C / self.group * 9),
                ),
                PKind::ConvTW => T::new(vec![C, C, 3, 3], randn(rng, C * C * 9)),
                PKind::Channel4d => T::new(vec![C, 1, 1], randn(rng, C)),
                PKind::PosChannel4d => T::new(
                    vec![C, 1, 1],
                    (0..C).map(|_| rng.gen_range(0.5..2.0)).collect(),
                ),
            }),
        };
        self.vars.insert(var, v.clone());
        v
    }
}

fn tensor(v: Val, what: &str) -> R<T> {
    match v {
        Val::T(t) => Ok(t),
        other => Err(format!("{what}: expected a tensor, got {other:?}")),
    }
}

/// Multiply slices of `t` along `axis` by s[channel]^exp; conv input-channel slices with groups.
fn scale_axis(t: &T, s: &[f64], axis: usize, exp: i32, conv_group: Option<usize>) -> R<T> {
    let mut out = t.clone();
    for i in 0..t.v.len() {
        let f = match conv_group {
            None => {
                let pos = t.at(i, axis);
                if t.dims[axis] != s.len() {
                    return Err(format!(
                        "scale of {} entries on an axis of {}",
                        s.len(),
                        t.dims[axis]
                    ));
                }
                s[pos]
            }
            Some(g) => {
                // Weight (out, in/g, kh, kw): input channel = group(out) * in/g + j.
                let (o, j) = (t.at(i, 0), t.at(i, 1));
                let group = o / (t.dims[0] / g);
                s[group * t.dims[1] + j]
            }
        };
        out.v[i] *= f.powi(exp);
    }
    Ok(out)
}

/// Resolve a parameter operand for a role: apply a pscale (output axis) or unscale (input axis).
fn param(v: Val, out_axis: usize, in_axis: usize, conv_group: Option<usize>) -> R<Option<T>> {
    Ok(match v {
        Val::None => None,
        Val::T(t) => Some(t),
        Val::PScaled(inner, s) => match param(*inner, out_axis, in_axis, conv_group)? {
            Some(t) => Some(scale_axis(&t, &s, out_axis, 1, None)?),
            None => None,
        },
        Val::Unscaled(inner, s) => match param(*inner, out_axis, in_axis, conv_group)? {
            Some(t) => Some(scale_axis(&t, &s, out_axis, -1, None)?),
            None => None,
        },
        Val::IScaled(inner, s) => match param(*inner, out_axis, in_axis, conv_group)? {
            Some(t) => Some(scale_axis(&t, &s, in_axis, 1, conv_group)?),
            None => return Err("iscale of an absent parameter".into()),
        },
        other => return Err(format!("expected a parameter, got {other:?}")),
    })
}

fn binary(a: &T, b: &T, f: impl Fn(f64, f64) -> f64) -> R<T> {
    // b broadcasts from the right.
    let r = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| [vec![1; r - d.len()], d.to_vec()].concat();
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let dims: Vec<usize> = da.iter().zip(&db).map(|(&x, &y)| x.max(y)).collect();
    let n: usize = dims.iter().product();
    let idx = |d: &[usize], mut i: usize| {
        let mut off = 0;
        let mut stride = 1;
        for k in (0..r).rev() {
            let pos = i % dims[k];
            i /= dims[k];
            if d[k] != 1 {
                off += pos * stride;
            }
            stride *= d[k];
        }
        off
    };
    let v = (0..n)
        .map(|i| f(a.v[idx(&da, i)], b.v[idx(&db, i)]))
        .collect();
    let base = if a.dims.len() >= b.dims.len() { a } else { b };
    Ok(T {
        dims,
        v,
        ..base.clone()
    })
}

fn matmul(x: &T, w: &T) -> T {
    let (n, k, m) = (x.dims[0], x.dims[1], w.dims[1]);
    let mut v = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            v[i * m + j] = (0..k).map(|t| x.v[i * k + t] * w.v[t * m + j]).sum();
        }
    }
    T::new(vec![n, m], v)
}

fn transpose2(w: &T) -> T {
    let (a, b) = (w.dims[0], w.dims[1]);
    T::new(
        vec![b, a],
        (0..a * b).map(|i| w.v[(i % a) * b + i / a]).collect(),
    )
}

fn add_bias(y: T, b: Option<T>) -> R<T> {
    match b {
        Some(b) => binary(&y, &b, |x, z| x + z),
        None => Ok(y),
    }
}

fn conv(x: &T, w: &T, b: Option<T>, g: usize) -> R<T> {
    let (n, c, h, wd) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let (m, cg) = (w.dims[0], w.dims[1]);
    if cg * g != c {
        return Err("conv group does not fit".into());
    }
    let mg = m / g;
    let mut v = vec![0.0; n * m * h * wd];
    for b_ in 0..n {
        for o in 0..m {
            let gi = o / mg;
            for y in 0..h {
                for xx in 0..wd {
                    let mut acc = 0.0;
                    for j in 0..cg {
                        let ci = gi * cg + j;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) =
                                    (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                acc += x.v[((b_ * c + ci) * h + iy as usize) * wd + ix as usize]
                                    * w.v[((o * cg + j) * 3 + ky) * 3 + kx];
                            }
                        }
                    }
                    v[((b_ * m + o) * h + y) * wd + xx] = acc;
                }
            }
        }
    }
    let y = T::new(vec![n, m, h, wd], v);
    match b {
        Some(b) => binary(&y, &T::new(vec![m, 1, 1], b.v), |p, q| p + q),
        None => Ok(y),
    }
}

/// Per-channel (axis 1) windows of 2x2, stride 1, over a 4-D tensor.
fn pool(x: &T, max: bool) -> T {
    let (n, c, h, w) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let mut v = vec![];
    for p in 0..n * c {
        for y in 0..h - 1 {
            for z in 0..w - 1 {
                let e = [(y, z), (y + 1, z), (y, z + 1), (y + 1, z + 1)]
                    .map(|(a, b)| x.v[(p * h + a) * w + b]);
                v.push(if max {
                    e.iter().copied().fold(f64::MIN, f64::max)
                } else {
                    e.iter().sum::<f64>() / 4.0
                });
            }
        }
    }
    T {
        dims: vec![n, c, h - 1, w - 1],
        v,
        ..x.clone()
    }
}

/// Reduce each (n, c) plane of a 4-D tensor.
fn per_plane(x: &T, f: impl Fn(&[f64]) -> f64) -> T {
    let (n, c) = (x.dims[0], x.dims[1]);
    let k = x.v.len() / (n * c);
    T {
        dims: vec![n, c, 1, 1],
        v: x.v.chunks(k).map(f).collect(),
        ..x.clone()
    }
}

/// Softmax over axis 1.
fn softmax(x: &T, log: bool) -> T {
    let (n, c) = (x.dims[0], x.dims[1]);
    let k = x.v.len() / (n * c);
    let mut out = x.clone();
    for b in 0..n {
        for i in 0..k {
            let at = |ch: usize| (b * c + ch) * k + i;
            let mx = (0..c).map(|ch| x.v[at(ch)]).fold(f64::MIN, f64::max);
            let z: f64 = (0..c).map(|ch| (x.v[at(ch)] - mx).exp()).sum();
            for ch in 0..c {
                let e = x.v[at(ch)] - mx;
                out.v[at(ch)] = if log { e - z.ln() } else { e.exp() / z };
            }
        }
    }
    out
}

fn bound(v: Val) -> R<f64> {
    match v {
        Val::Leaf(s) => match s.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            s => s.parse().map_err(|_| format!("bad bound {s}")),
        },
        other => Err(format!("expected a constant, got {other:?}")),
    }
}

fn eval(p: &[ENodeOrVar<Ec>], id: usize, role: Role, env: &mut Env) -> R<Val> {
    let node = match &p[id] {
        ENodeOrVar::Var(v) => return Ok(env.make(*v, role)),
        ENodeOrVar::ENode(n) => n.clone(),
    };
    let ch: Vec<usize> = node.children().iter().map(|&c| usize::from(c)).collect();
    let ev = |i: usize, r: Role, env: &mut Env| eval(p, ch[i], r, env);
    let data_rank = match role {
        Role::Data(r) => r,
        _ => 4,
    };
    let d = Role::Data(data_rank);
    let t = |v: Val| tensor(v, "operand");
    Ok(match node {
        Ec::Leaf(s) => match s.as_str() {
            "none" => Val::None,
            other => Val::Leaf(other.to_string()),
        },
        Ec::Scale(_) => {
            let s = ev(0, Role::Scale, env)?;
            let x = t(ev(1, d, env)?)?;
            let factors: Vec<f64> = match &s {
                Val::Vec(v) => {
                    if x.dims[x.chan] != v.len() {
                        return Err("scale vector does not match the channel axis".into());
                    }
                    (0..x.dims[x.chan]).map(|pos| v[pos]).collect()
                }
                Val::Spread(v) => {
                    if x.dims[x.chan] != x.outer * v.len() * x.block {
                        return Err("spread does not match the tensor's channel layout".into());
                    }
                    (0..x.dims[x.chan])
                        .map(|pos| v[(pos % (v.len() * x.block)) / x.block])
                        .collect()
                }
                Val::Place(v) => {
                    let off = x.place.ok_or("place on a tensor that is not a concat")?;
                    (0..x.dims[x.chan])
                        .map(|pos| {
                            if pos >= off && pos < off + v.len() {
                                v[pos - off]
                            } else {
                                1.0
                            }
                        })
                        .collect()
                }
                other => return Err(format!("scale by {other:?}")),
            };
            let mut y = x.clone();
            for i in 0..x.v.len() {
                y.v[i] *= factors[x.at(i, x.chan)];
            }
            Val::T(y)
        }
        Ec::PScale(_) | Ec::Unscale(_) | Ec::IScale(_) => {
            let s = match ev(0, Role::Scale, env)? {
                Val::Vec(v) => v,
                other => return Err(format!("pscale/unscale/iscale by {other:?}")),
            };
            let inner = Box::new(ev(1, role, env)?);
            match node {
                Ec::PScale(_) => Val::PScaled(inner, s),
                Ec::Unscale(_) => Val::Unscaled(inner, s),
                _ => Val::IScaled(inner, s),
            }
        }
        Ec::Spread(_) | Ec::Place(_) => match ev(0, Role::Scale, env)? {
            Val::Vec(v) if matches!(node, Ec::Spread(_)) => Val::Spread(v),
            Val::Vec(v) => Val::Place(v),
            other => return Err(format!("spread/place of {other:?}")),
        },
        Ec::Param(_) => ev(0, role, env)?,
        Ec::Relu(_) => Val::T(t(ev(0, d, env)?)?.map(|x| x.max(0.0))),
        Ec::LeakyRelu(_) => Val::T(t(ev(0, d, env)?)?.map(|x| if x > 0.0 { x } else { 0.1 * x })),
        Ec::PRelu(_) => {
            let x = t(ev(0, d, env)?)?;
            let a = t(ev(1, Role::Param(PKind::Channel4d), env)?)?;
            Val::T(binary(&x, &a, |x, a| if x > 0.0 { x } else { a * x })?)
        }
        Ec::Clip(_) => {
            let x = t(ev(0, d, env)?)?;
            let (lo, hi) = (
                bound(ev(1, Role::Bound, env)?)?,
                bound(ev(2, Role::Bound, env)?)?,
            );
            Val::T(x.map(|v| v.max(lo).min(hi)))
        }
        Ec::Sigmoid(_) => Val::T(t(ev(0, d, env)?)?.map(|x| 1.0 / (1.0 + (-x).exp()))),
        Ec::Tanh(_) => Val::T(t(ev(0, d, env)?)?.map(f64::tanh)),
        Ec::HardSigmoid(_) => Val::T(t(ev(0, d, env)?)?.map(|x| (0.2 * x + 0.5).clamp(0.0, 1.0))),
        Ec::HardSwish(_) => Val::T(t(ev(0, d, env)?)?.map(|x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0))),
        // The tanh form: the check compares a rule's two sides, for which either form serves.
        // Per sample and channel over the spatial positions, epsilon 1e-5.
        Ec::InstanceNorm(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let s = x.dims[2] * x.dims[3];
            let mut y = x.clone();
            for plane in y.v.chunks_mut(s) {
                let m = plane.iter().sum::<f64>() / s as f64;
                let var = plane.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / s as f64;
                plane
                    .iter_mut()
                    .for_each(|v| *v = (*v - m) / (var + 1e-5).sqrt());
            }
            Val::T(y)
        }
        Ec::Gelu(_) => Val::T(t(ev(0, d, env)?)?.map(|x| {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        })),
        Ec::Softmax(_) => Val::T(softmax(&t(ev(0, d, env)?)?, false)),
        Ec::LogSoftmax(_) => Val::T(softmax(&t(ev(0, d, env)?)?, true)),
        Ec::Lrn(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let sq = x.map(|v| v * v);
            let mut y = x.clone();
            for i in 0..x.v.len() {
                let c = x.at(i, 1);
                let k = x.v.len() / (x.dims[0] * x.dims[1]);
                let base = i - c * k;
                let s: f64 = (c.saturating_sub(1)..(c + 2).min(x.dims[1]))
                    .map(|cc| sq.v[base + cc * k])
                    .sum();
                y.v[i] = x.v[i] / (1.0 + 1e-1 / 3.0 * s).powf(0.75);
            }
            Val::T(y)
        }
        Ec::MaxPool(_) => Val::T(pool(&t(ev(0, Role::Data(4), env)?)?, true)),
        Ec::AveragePool(_) => Val::T(pool(&t(ev(0, Role::Data(4), env)?)?, false)),
        Ec::GlobalAveragePool(_) => Val::T(per_plane(&t(ev(0, Role::Data(4), env)?)?, |v| {
            v.iter().sum::<f64>() / v.len() as f64
        })),
        Ec::GlobalMaxPool(_) => Val::T(per_plane(&t(ev(0, Role::Data(4), env)?)?, |v| {
            v.iter().copied().fold(f64::MIN, f64::max)
        })),
        Ec::Dropout(_) | Ec::Identity(_) | Ec::Squeeze(_) => ev(0, d, env)?,
        Ec::Unsqueeze(_) => {
            let mut x = t(ev(0, d, env)?)?;
            x.dims.push(1);
            Val::T(x)
        }
        Ec::Flatten(_) | Ec::Reshape(_) | Ec::MixingReshape(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let (n, c, h, w) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
            let mut y = x.clone();
            match node {
                Ec::Flatten(_) => {
                    y.dims = vec![n, c * h * w];
                    y.block = h * w;
                }
                Ec::Reshape(_) => y.dims = vec![n, c, h * w],
                _ => {
                    y.dims = vec![n, 2, c / 2 * h * w];
                    y.chan = 1;
                }
            }
            Val::T(y)
        }
        // Pad the last axis by one at each end (zeros, or ones for pad-value); Slice takes
        // positions 1.. of it.
        Ec::Pad(_) | Ec::PadValue(_) | Ec::Slice(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let w = x.dims[3];
            let fill = if matches!(node, Ec::PadValue(_)) {
                1.0
            } else {
                0.0
            };
            let mut v = vec![];
            for row in x.v.chunks(w) {
                if matches!(node, Ec::Slice(_)) {
                    v.extend_from_slice(&row[1..]);
                } else {
                    v.push(fill);
                    v.extend_from_slice(row);
                    v.push(fill);
                }
            }
            let mut dims = x.dims.clone();
            dims[3] = v.len() / (x.v.len() / w);
            Val::T(T { dims, v, ..x })
        }
        // Interpolate the last axis: every position and the midpoints between neighbours.
        Ec::Resize(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let w = x.dims[3];
            let mut v = vec![];
            for row in x.v.chunks(w) {
                for i in 0..w {
                    v.push(row[i]);
                    if i + 1 < w {
                        v.push(0.5 * (row[i] + row[i + 1]));
                    }
                }
            }
            let mut dims = x.dims.clone();
            dims[3] = 2 * w - 1;
            Val::T(T { dims, v, ..x })
        }
        Ec::Transpose(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let (n, c, h, w) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
            let mut v = vec![0.0; x.v.len()];
            for (i, val) in x.v.iter().enumerate() {
                let (b, cc, y, z) = (i / (c * h * w), (i / (h * w)) % c, (i / w) % h, i % w);
                v[((b * h + y) * w + z) * c + cc] = *val;
            }
            Val::T(T {
                dims: vec![n, h, w, c],
                v,
                chan: 3,
                ..x
            })
        }
        Ec::Concat(_) => {
            let parts = [
                t(ev(0, Role::Data(4), env)?)?,
                t(ev(1, Role::Data(4), env)?)?,
                t(ev(2, Role::Data(4), env)?)?,
            ];
            let (n, k) = (
                parts[0].dims[0],
                parts[0].v.len() / (parts[0].dims[0] * parts[0].dims[1]),
            );
            let mut v = vec![];
            for b in 0..n {
                for p in &parts {
                    let len = p.dims[1] * k;
                    v.extend_from_slice(&p.v[b * len..(b + 1) * len]);
                }
            }
            let cs: usize = parts.iter().map(|p| p.dims[1]).sum();
            let mut dims = parts[0].dims.clone();
            dims[1] = cs;
            Val::T(T {
                dims,
                v,
                chan: 1,
                outer: 1,
                block: 1,
                place: Some(parts[0].dims[1]),
            })
        }
        Ec::ConcatOther(_) => {
            let (a, b) = (
                t(ev(0, Role::Data(4), env)?)?,
                t(ev(1, Role::Data(4), env)?)?,
            );
            let mut y = a.clone();
            y.dims[0] += b.dims[0];
            y.v.extend_from_slice(&b.v);
            Val::T(y)
        }
        Ec::Add(_) | Ec::Sub(_) | Ec::Mul(_) | Ec::Div(_) | Ec::Max(_) | Ec::Min(_) => {
            let pk = if matches!(node, Ec::Div(_)) {
                PKind::PosChannel4d
            } else {
                PKind::Channel4d
            };
            let arg = |i: usize, env: &mut Env| -> R<T> {
                let is_param = matches!(
                    &p[ch[i]],
                    ENodeOrVar::ENode(Ec::Param(_) | Ec::PScale(_) | Ec::Unscale(_))
                );
                let v = eval(p, ch[i], if is_param { Role::Param(pk) } else { d }, env)?;
                Ok(param(v, 0, 0, None)?.ok_or("absent operand")?)
            };
            let (a, b) = (arg(0, env)?, arg(1, env)?);
            Val::T(match node {
                Ec::Add(_) => binary(&a, &b, |x, y| x + y)?,
                Ec::Sub(_) => binary(&a, &b, |x, y| x - y)?,
                Ec::Mul(_) => binary(&a, &b, |x, y| x * y)?,
                Ec::Max(_) => binary(&a, &b, f64::max)?,
                Ec::Min(_) => binary(&a, &b, f64::min)?,
                _ => binary(&a, &b, |x, y| x / y)?,
            })
        }
        Ec::Gemm(_) | Ec::GemmN(_) | Ec::GemmTransA(_) | Ec::MatMul(_) => {
            let x = t(ev(0, Role::Data(2), env)?)?;
            let w = ev(1, Role::Param(PKind::Matrix), env)?;
            let y = match node {
                Ec::Gemm(_) => matmul(
                    &x,
                    &transpose2(&param(w, 0, 1, None)?.ok_or("absent weight")?),
                ),
                Ec::GemmTransA(_) => matmul(
                    &transpose2(&x),
                    &transpose2(&param(w, 0, 1, None)?.ok_or("absent weight")?),
                ),
                _ => matmul(&x, &param(w, 1, 0, None)?.ok_or("absent weight")?),
            };
            if matches!(node, Ec::MatMul(_)) {
                Val::T(y)
            } else {
                let b = param(ev(2, Role::Param(PKind::Bias), env)?, 0, 0, None)?;
                Val::T(add_bias(y, b)?)
            }
        }
        Ec::Conv(_) => {
            let g = match ev(0, Role::Group, env)? {
                Val::Leaf(s) => s
                    .trim_start_matches('g')
                    .parse::<usize>()
                    .map_err(|_| "bad group")?,
                other => return Err(format!("conv group {other:?}")),
            };
            let x = t(ev(1, Role::Data(4), env)?)?;
            let w = param(ev(2, Role::Param(PKind::ConvW), env)?, 0, 1, Some(g))?
                .ok_or("absent weight")?;
            let b = param(ev(3, Role::Param(PKind::Bias), env)?, 0, 0, None)?;
            Val::T(conv(&x, &w, b, g)?)
        }
        Ec::ConvTranspose(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let w = param(ev(1, Role::Param(PKind::ConvTW), env)?, 1, 0, None)?
                .ok_or("absent weight")?;
            let b = param(ev(2, Role::Param(PKind::Bias), env)?, 0, 0, None)?;
            // Stride 1, pads 1, 3x3: the conv with the kernel flipped and its axes swapped.
            let mut wf = w.clone();
            wf.dims = vec![w.dims[1], w.dims[0], 3, 3];
            for i in 0..w.dims[0] {
                for o in 0..w.dims[1] {
                    for k in 0..9 {
                        wf.v[(o * w.dims[0] + i) * 9 + 8 - k] = w.v[(i * w.dims[1] + o) * 9 + k];
                    }
                }
            }
            Val::T(conv(&x, &wf, b, 1)?)
        }
        Ec::ConvTransposeGrouped(_) | Ec::ResizeValue(_) => {
            return Err(format!("{node:?} has no evaluator (no rule uses it)"))
        }
        Ec::BatchNorm(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let mut q = vec![];
            for (i, k) in [
                (1, PKind::Stat),
                (2, PKind::Stat),
                (3, PKind::Stat),
                (4, PKind::PosStat),
            ] {
                q.push(param(ev(i, Role::Param(k), env)?, 0, 0, None)?.ok_or("absent statistic")?);
            }
            let mut y = x.clone();
            for i in 0..x.v.len() {
                let c = x.at(i, 1);
                y.v[i] = (x.v[i] - q[2].v[c]) / (q[3].v[c] + 1e-5).sqrt() * q[0].v[c] + q[1].v[c];
            }
            Val::T(y)
        }
        Ec::BatchNormTrain(_) => {
            let x = t(ev(0, Role::Data(4), env)?)?;
            let mut y = x.clone();
            for c in 0..x.dims[1] {
                let idx: Vec<usize> = (0..x.v.len()).filter(|&i| x.at(i, 1) == c).collect();
                let mean = idx.iter().map(|&i| x.v[i]).sum::<f64>() / idx.len() as f64;
                let var =
                    idx.iter().map(|&i| (x.v[i] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
                for &i in &idx {
                    y.v[i] = (x.v[i] - mean) / var.sqrt();
                }
            }
            Val::T(y)
        }
    })
}

/// A value in the form that compares: parameters with their wrappers applied.
fn settle(v: Val) -> R<Val> {
    Ok(match v {
        Val::PScaled(..) | Val::Unscaled(..) | Val::IScaled(..) => match param(v, 0, 0, None)? {
            Some(t) => Val::T(t),
            None => Val::None,
        },
        v => v,
    })
}

fn rel_err(a: &Val, b: &Val) -> R<f64> {
    match (a, b) {
        (Val::T(x), Val::T(y)) if x.dims == y.dims => {
            let scale = y.v.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            Ok(x.v
                .iter()
                .zip(&y.v)
                .fold(0f64, |m, (p, q)| m.max((p - q).abs()))
                / scale)
        }
        (Val::T(x), Val::T(y)) => Err(format!(
            "the sides have shapes {:?} and {:?}",
            x.dims, y.dims
        )),
        (x, y) if x == y => Ok(0.0),
        (x, y) => Err(format!("the sides differ in kind: {x:?} vs {y:?}")),
    }
}

fn side(p: &Pattern<Ec>, env: &mut Env) -> R<Val> {
    let nodes = p.ast.as_ref();
    settle(eval(nodes, nodes.len() - 1, Role::Data(4), env)?)
}

/// The largest relative difference between a rule's two sides that counts as equal (f64
/// evaluation on random instances).
pub const SOUND: f64 = 1e-9;

/// Why a rule is unsound, with the instance that shows it, or None: the rule checked on
/// `trials` random instances (reproducible: instance k draws from seed k).
pub fn refute(rule: &Rule, trials: u64) -> Option<String> {
    for seed in 0..trials {
        match check_one(rule, seed) {
            Ok(e) if e <= SOUND => {}
            Ok(e) => {
                return Some(format!(
                    "its two sides differ by relative error {e:.2e} on random instance {seed} \
                     (tensors, scales and parameters drawn from seed {seed}, group size {})",
                    [1, 2, 4][seed as usize % 3]
                ))
            }
            Err(e) => return Some(format!("on random instance {seed}: {e}")),
        }
    }
    None
}

fn check_one(rule: &Rule, seed: u64) -> R<f64> {
    let mut env = Env {
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        vars: HashMap::new(),
        conds: rule.conds.iter().map(|(k, v)| (*v, *k)).collect(),
        group: [1, 2, 4][seed as usize % 3],
    };
    let lhs = side(&rule.lhs, &mut env).map_err(|e| format!("left side: {e}"))?;
    let rhs = side(&rule.rhs, &mut env).map_err(|e| format!("right side: {e}"))?;
    rel_err(&lhs, &rhs)
}

/// Check one rule on `trials` random instances; the worst relative error, or why it fails.
pub fn check_rule(rule: &Rule, trials: u64) -> R<f64> {
    let mut worst = 0f64;
    for seed in 0..trials {
        worst = worst.max(check_one(rule, seed)?);
    }
    Ok(worst)
}
