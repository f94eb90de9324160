//! The EC graph (issue 17): the canonical model rewritten so that its trainable tensors are
//! the basis-path coordinates and its nodes compute every weight from them. Autodiff
//! through it is the inverse chain rule, and plain SGD with momentum on its tensors (weight
//! decay on p only) is EC-SGD's path-space step (spec §5; docs/ec-graph.md derives both).
//!
//! For every block of the [`Basis`] (in the notation of [`super::step`]):
//! - `ec.v.<b>`, trainable: the coordinate q_k = V_k·P of every free skeleton value V_k (its
//!   own chain's P; q_k = V_k when unchained, as in chain and star blocks);
//! - the V's from q, level by level (a V whose chain runs through earlier V's is
//!   q_k / P_chain(k)), and the chain values P_c = Π_{k ∈ c} V_k (Gather and Mul over
//!   a padded list of V indices; P = V when every chain has its own V);
//! - for every tensor w of the block, `ec.p.<w>`, trainable, of w's shape: p = w·P_chain
//!   (chained; the P's gathered along the chain axis and broadcast, so conv taps share their
//!   channel's value) or p = w (unchained); then w = ScatterND(p / P_chain, fixed indices,
//!   [V's at their own scalars; designated scalars from `ec.fixed.<w>`]). The entries of p
//!   at fixed scalars are 0 and do not reach w. An unchained tensor without fixed scalars
//!   is its own coordinate: it stays the parameter it was.
//!
//! Parameters outside every block stay as they are. The graph records its roles in the
//! model's metadata: `ecc.frozen` (the designated constants, which are read as data but not
//! trained) and `ecc.no_decay` (the q's: EC-SGD decays p only). [`fold`] computes the weights
//! back into an ordinary model.

use super::basis::{Basis, Block, TensorRole};
use super::step::{EcStep, Tensors};
use crate::error::{Error, Result};
use crate::ir::{BinaryKind, Constant, Graph, Node, Op, Shape, META_FROZEN, META_NO_DECAY};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Whether `g` is an EC graph (written by [`build`]): its coordinates are parameters and its
/// metadata lists the q's.
pub fn is_ec_graph(g: &Graph) -> bool {
    g.params.keys().any(|k| k.starts_with("ec.v."))
        && g.meta.metadata.iter().any(|(k, _)| k == META_NO_DECAY)
}

/// The trainable coordinate tensor of block tensor `t`: `ec.p.<w>`, or the weight itself when
/// it is unchained and has no fixed scalars (then p = w: no node computes it).
pub fn p_name(t: &TensorRole) -> String {
    if t.chain.is_empty() && t.fixed.is_empty() {
        t.param.clone()
    } else {
        format!("ec.p.{}", t.param)
    }
}
/// The V coordinates of block `b`.
pub fn v_name(b: usize) -> String {
    format!("ec.v.{b}")
}
fn fixed_name(w: &str) -> String {
    format!("ec.fixed.{w}")
}

struct Builder<'g> {
    g: &'g mut Graph,
    nodes: Vec<Node>,
}

impl Builder<'_> {
    fn node(&mut self, op: Op, inputs: Vec<String>, out: String, dims: Vec<usize>) -> String {
        self.g.shapes.insert(out.clone(), Shape::fixed(dims));
        self.nodes.push(Node {
            name: format!("{out}/{}", op.onnx_name()),
            op,
            inputs,
            outputs: vec![out.clone()],
        });
        out
    }
    /// Give the last node's output the name `to` (a weight's name, read by the model).
    fn rename_last(&mut self, to: &str) {
        let n = self.nodes.last_mut().expect("a node");
        let from = std::mem::replace(&mut n.outputs[0], to.to_string());
        let s = self.g.shapes.remove(&from).expect("shape");
        self.g.shapes.insert(to.to_string(), s);
    }
    fn index_const(&mut self, name: String, dims: Vec<usize>, v: Vec<i64>) -> String {
        self.g
            .shapes
            .insert(name.clone(), Shape::fixed(dims.clone()));
        self.g.consts.insert(name.clone(), Constant::i64(dims, v));
        name
    }
    fn param(&mut self, name: String, dims: Vec<usize>, v: Vec<f32>) -> String {
        self.g
            .shapes
            .insert(name.clone(), Shape::fixed(dims.clone()));
        self.g.params.insert(name.clone(), Constant::f32(dims, v));
        name
    }
    /// `x[indices]` along axis 0 of a vector.
    fn gather(&mut self, x: &str, indices: &[usize], out: String) -> String {
        let idx = self.index_const(
            format!("{out}.indices"),
            vec![indices.len()],
            indices.iter().map(|&i| i as i64).collect(),
        );
        self.node(
            Op::Gather {
                axis: 0,
                indices: indices.to_vec(),
                idx_dims: vec![indices.len()],
            },
            vec![x.to_string(), idx],
            out,
            vec![indices.len()],
        )
    }
    fn binary(
        &mut self,
        kind: BinaryKind,
        a: &str,
        b: &str,
        out: String,
        dims: &[usize],
    ) -> String {
        self.node(
            Op::Binary {
                kind,
                legacy_axis: None,
            },
            vec![a.to_string(), b.to_string()],
            out,
            dims.to_vec(),
        )
    }
    fn concat(&mut self, parts: &[String], out: String, len: usize) -> String {
        self.node(Op::Concat { axis: 0 }, parts.to_vec(), out, vec![len])
    }
    /// Π_j x[m[j]] for each row m of `rows` (indices into `x`, which has `len` entries;
    /// `one` the name of a one-element vector [1] for padding).
    fn products(
        &mut self,
        x: &str,
        len: usize,
        rows: &[Vec<usize>],
        one: &str,
        out: &str,
    ) -> String {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let ext = self.concat(
            &[x.to_string(), one.to_string()],
            format!("{out}.ext"),
            len + 1,
        );
        let mut acc: Option<String> = None;
        for j in 0..width {
            let col: Vec<usize> = rows
                .iter()
                .map(|m| m.get(j).copied().unwrap_or(len))
                .collect();
            let f = self.gather(&ext, &col, format!("{out}.f{j}"));
            acc = Some(match acc {
                None => f,
                Some(a) => self.binary(
                    BinaryKind::Mul,
                    &a,
                    &f,
                    format!("{out}.m{j}"),
                    &[rows.len()],
                ),
            });
        }
        acc.expect("width >= 1")
    }
}

/// The one-element vector [1.0] (frozen), made once.
fn one(b: &mut Builder, frozen: &mut Vec<String>) -> String {
    let name = "ec.one".to_string();
    if !b.g.params.contains_key(&name) {
        b.param(name.clone(), vec![1], vec![1.0]);
        frozen.push(name.clone());
    }
    name
}

/// The EC graph of `canon` (the canonical model of [`super::convert`]) with its `basis`.
/// Needs opset 11 (ScatterND).
pub fn build(canon: &Graph, basis: &Basis) -> Result<Graph> {
    if canon.meta.opset() < 11 {
        return Err(Error::unsupported(format!(
            "the EC graph of an opset-{} model (it needs opset 11 for ScatterND; convert the model to a newer opset first)",
            canon.meta.opset()
        )));
    }
    let mut g = canon.clone();
    let weights: Tensors = canon
        .params
        .iter()
        .filter(|(_, c)| c.is_f32())
        .map(|(k, c)| (k.clone(), c.as_f32().iter().map(|&x| x as f64).collect()))
        .collect();
    let step = EcStep::new(basis);
    let (p, q) = step.coordinates(&weights);
    let mut frozen = vec![];
    let mut no_decay = vec![];
    let mut b = Builder {
        g: &mut g,
        nodes: vec![],
    };
    for (bi, block) in basis.blocks.iter().enumerate() {
        let qn = b.param(
            v_name(bi),
            vec![block.v.len()],
            q[bi].iter().map(|&x| x as f32).collect(),
        );
        no_decay.push(qn.clone());
        let (v, pc) = block_values(&mut b, block, bi, &qn, &mut frozen)?;
        for t in block.tensors() {
            let w = &t.param;
            if p_name(t) == *w {
                continue;
            }
            let dims = t.dims.clone();
            let pn = b.param(
                p_name(t),
                dims.clone(),
                p[w].iter().map(|&x| x as f32).collect(),
            );
            b.g.params.remove(w);
            let rank = dims.len();
            let mut w0 = pn.clone();
            if !t.chain.is_empty() {
                if t.chain.len() != dims[t.axis] {
                    return Err(Error::exec(format!(
                        "the chain of '{w}' has {} entries for axis {} of {dims:?}",
                        t.chain.len(),
                        t.axis
                    )));
                }
                let chains: Vec<usize> = t.chain.iter().map(|&c| c as usize).collect();
                let mut pt = b.gather(&pc, &chains, format!("{w}.ec_chain"));
                if rank - t.axis > 1 {
                    let mut shape = vec![chains.len()];
                    shape.resize(rank - t.axis, 1);
                    let sname = b.index_const(
                        format!("{w}.ec_chain_shape"),
                        vec![shape.len()],
                        shape.iter().map(|&d| d as i64).collect(),
                    );
                    pt = b.node(
                        Op::Reshape {
                            shape: shape.iter().map(|&d| d as i64).collect(),
                        },
                        vec![pt, sname],
                        format!("{w}.ec_chain_b"),
                        shape,
                    );
                }
                w0 = b.binary(BinaryKind::Div, &pn, &pt, format!("{w}.ec_free"), &dims);
            }
            if t.fixed.is_empty() {
                // Chained without fixed scalars: the division is the weight.
                b.rename_last(w);
                continue;
            }
            // V's at their own scalars first, then the designated scalars.
            let v_at: HashMap<usize, usize> = t.v.iter().map(|&(k, i)| (i, k as usize)).collect();
            let mut order: Vec<usize> = t.v.iter().map(|&(_, i)| i).collect();
            let designated: Vec<usize> = t
                .fixed
                .iter()
                .copied()
                .filter(|i| !v_at.contains_key(i))
                .collect();
            order.extend(&designated);
            let mut parts = vec![];
            if !t.v.is_empty() {
                let ks: Vec<usize> = t.v.iter().map(|&(k, _)| k as usize).collect();
                parts.push(b.gather(&v, &ks, format!("{w}.ec_v")));
            }
            if !designated.is_empty() {
                let vals = canon.params[w].as_f32();
                let fname = b.param(
                    fixed_name(w),
                    vec![designated.len()],
                    designated.iter().map(|&i| vals[i]).collect(),
                );
                frozen.push(fname.clone());
                parts.push(fname);
            }
            let updates = if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                b.concat(&parts, format!("{w}.ec_fixed_values"), order.len())
            };
            let mut flat_idx = Vec::with_capacity(order.len() * rank);
            for &i in &order {
                flat_idx.extend(unravel(i, &dims));
            }
            let iname = b.index_const(
                format!("{w}.ec_fixed_at"),
                vec![order.len(), rank],
                flat_idx.iter().map(|&i| i as i64).collect(),
            );
            b.node(
                Op::ScatterNd {
                    indices: flat_idx,
                    idx_dims: vec![order.len(), rank],
                },
                vec![w0, updates, iname],
                w.clone(),
                dims,
            );
        }
    }
    let Builder { nodes, .. } = b;
    g.nodes.splice(0..0, nodes);
    let list = |v: &[String]| serde_json::to_string(v).expect("names serialize");
    g.meta
        .metadata
        .retain(|(k, _)| k != META_FROZEN && k != META_NO_DECAY);
    g.meta.metadata.push((META_FROZEN.into(), list(&frozen)));
    g.meta
        .metadata
        .push((META_NO_DECAY.into(), list(&no_decay)));
    Ok(g)
}

/// The V vector (block order) and the chain values P of block `bi`, as graph values.
fn block_values(
    b: &mut Builder,
    block: &Block,
    bi: usize,
    q: &str,
    frozen: &mut Vec<String>,
) -> Result<(String, String)> {
    let n = block.v.len();
    let chain_of_v: Vec<Option<usize>> = (0..n).map(|k| block.v_chain(k)).collect();
    // Level of each V: 0 without a chain (or an empty one), else one more than its chain's.
    let mut level = vec![0usize; n];
    for k in 0..n {
        if let Some(c) = chain_of_v[k] {
            for &j in &block.monomials[c] {
                if j as usize >= k {
                    return Err(Error::exec(format!(
                        "block {bi}: V {k} sits on a chain through a later V {j}"
                    )));
                }
                level[k] = level[k].max(level[j as usize] + 1);
            }
        }
    }
    let top = level.iter().copied().max().unwrap_or(0);
    let v = if top == 0 {
        q.to_string()
    } else {
        // Vsofar: the V's of the levels done, in `order`.
        let mut order: Vec<usize> = (0..n).filter(|&k| level[k] == 0).collect();
        let mut sofar = b.gather(q, &order, format!("ec.{bi}.V0"));
        let one = one(b, frozen);
        for l in 1..=top {
            let ks: Vec<usize> = (0..n).filter(|&k| level[k] == l).collect();
            let pos: HashMap<usize, usize> =
                order.iter().enumerate().map(|(p, &k)| (k, p)).collect();
            let rows: Vec<Vec<usize>> = ks
                .iter()
                .map(|&k| {
                    let c = chain_of_v[k].expect("level > 0 has a chain");
                    block.monomials[c]
                        .iter()
                        .map(|&j| pos[&(j as usize)])
                        .collect()
                })
                .collect();
            let pk = b.products(&sofar, order.len(), &rows, &one, &format!("ec.{bi}.P{l}"));
            let ql = b.gather(q, &ks, format!("ec.{bi}.q{l}"));
            let vl = b.binary(
                BinaryKind::Div,
                &ql,
                &pk,
                format!("ec.{bi}.V{l}"),
                &[ks.len()],
            );
            order.extend(&ks);
            sofar = b.concat(&[sofar, vl], format!("ec.{bi}.Vs{l}"), order.len());
        }
        let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &k)| (k, p)).collect();
        let perm: Vec<usize> = (0..n).map(|k| pos[&k]).collect();
        b.gather(&sofar, &perm, format!("ec.{bi}.V"))
    };
    let simple = block.monomials.len() == n
        && block
            .monomials
            .iter()
            .enumerate()
            .all(|(c, m)| m.len() == 1 && m[0] as usize == c);
    let pc = if simple {
        v.clone()
    } else {
        let one = one(b, frozen);
        let rows: Vec<Vec<usize>> = block
            .monomials
            .iter()
            .map(|m| m.iter().map(|&j| j as usize).collect())
            .collect();
        b.products(&v, n, &rows, &one, &format!("ec.{bi}.P"))
    };
    Ok((v, pc))
}

/// The multi-index of flat index `i` in `dims`.
fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut out = vec![0; dims.len()];
    for (a, &d) in dims.iter().enumerate().rev() {
        out[a] = i % d;
        i /= d;
    }
    out
}

/// Fold the parameter computations of `g` back into parameters: every node that reads no
/// graph input (directly or through other such nodes) is computed once, in f64, and its
/// outputs that the rest of the graph reads become parameters; parameters nothing reads
/// any more are dropped, with the EC graph's metadata. On an EC graph this gives the model
/// with the weights that its coordinates stand for.
pub fn fold(g: &Graph) -> Result<Graph> {
    let mut fixed: HashSet<&str> = g.params.keys().map(String::as_str).collect();
    fixed.extend(g.consts.keys().map(String::as_str));
    let (computed, kept): (Vec<&Node>, Vec<&Node>) = g.nodes.iter().partition(|n| {
        let f = n.data_inputs().iter().all(|x| fixed.contains(x.as_str()));
        if f {
            fixed.extend(n.outputs.iter().map(String::as_str));
        }
        f
    });
    let read_later: BTreeSet<&str> = kept
        .iter()
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .chain(g.outputs.iter().map(|o| o.name.as_str()))
        .collect();
    let wanted: Vec<String> = computed
        .iter()
        .flat_map(|n| n.outputs.iter())
        .filter(|o| read_later.contains(o.as_str()))
        .cloned()
        .collect();
    let mut out = g.clone();
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut sub = g.clone();
    sub.inputs.clear();
    sub.meta.tail = None;
    sub.nodes = computed.into_iter().cloned().collect();
    sub.outputs = wanted
        .iter()
        .map(|name| crate::ir::ValueInfo {
            name: name.clone(),
            declared: vec![],
            elem_type: 1,
        })
        .collect();
    let ex = crate::exec::Executor::with_dtype(&sub, candle_core::DType::F64)?;
    for (name, t) in wanted.iter().zip(ex.forward(&[])?) {
        out.params
            .insert(name.clone(), crate::exec::tensor_constant(&t)?);
    }
    out.nodes = kept.into_iter().cloned().collect();
    let read: HashSet<String> = out
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter())
        .chain(out.outputs.iter().map(|o| &o.name))
        .cloned()
        .collect();
    out.params.retain(|k, _| read.contains(k));
    out.consts.retain(|k, _| read.contains(k));
    let live: HashSet<String> = out
        .params
        .keys()
        .chain(out.consts.keys())
        .chain(out.inputs.iter().map(|v| &v.name))
        .chain(out.nodes.iter().flat_map(|n| n.outputs.iter()))
        .cloned()
        .collect();
    out.shapes.retain(|k, _| live.contains(k));
    out.meta
        .metadata
        .retain(|(k, _)| k != META_FROZEN && k != META_NO_DECAY);
    Ok(out)
}
