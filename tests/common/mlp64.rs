//! A small f64 interpreter for MLPs with residual branches (loss and gradient by reverse
//! mode), and the models the f64 reference tests share.

use ecc::ec::step::Tensors;
use ecc::ir::{Graph, Op};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// A small f64 interpreter for graphs of Gemm(transB=1), Relu and Add over (batch,
/// features) tensors: loss 0.5*mean|y - t|^2 and its gradient by reverse mode.
pub struct Mlp {
    nodes: Vec<(Op, Vec<String>, String)>,
    input: String,
    output: String,
    x: Vec<f64>,
    t: Vec<f64>,
    n: usize,
    width: HashMap<String, usize>,
}

impl Mlp {
    pub fn new(g: &Graph, seed: u64) -> Self {
        let nodes: Vec<_> = g
            .nodes
            .iter()
            .map(|n| (n.op.clone(), n.inputs.clone(), n.outputs[0].clone()))
            .collect();
        let width: HashMap<String, usize> = g
            .shapes
            .iter()
            .map(|(k, s)| (k.clone(), *s.dims.last().unwrap()))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = 5;
        let (input, output) = (g.inputs[0].name.clone(), g.outputs[0].name.clone());
        Mlp {
            x: (0..n * width[&input])
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect(),
            t: (0..n * width[&output])
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect(),
            nodes,
            input,
            output,
            n,
            width,
        }
    }

    pub fn loss_grad(&self, w: &Tensors) -> (f64, Tensors) {
        let n = self.n;
        let mut val: HashMap<String, Vec<f64>> = HashMap::new();
        val.insert(self.input.clone(), self.x.clone());
        for (op, ins, out) in &self.nodes {
            let y = match op {
                Op::Gemm { .. } => {
                    let (xs, ws) = (&val[&ins[0]], &w[&ins[1]]);
                    let (i, o) = (self.width[&ins[0]], self.width[out]);
                    let mut z = vec![0.0; n * o];
                    for s in 0..n {
                        for r in 0..o {
                            let mut v = ins.get(2).map_or(0.0, |b| w[b][r]);
                            for c in 0..i {
                                v += ws[r * i + c] * xs[s * i + c];
                            }
                            z[s * o + r] = v;
                        }
                    }
                    z
                }
                Op::Relu => val[&ins[0]].iter().map(|v| v.max(0.0)).collect(),
                Op::Binary { .. } => val[&ins[0]]
                    .iter()
                    .zip(&val[&ins[1]])
                    .map(|(a, b)| a + b)
                    .collect(),
                other => panic!("the test interpreter has no {other:?}"),
            };
            val.insert(out.clone(), y);
        }
        let y = &val[&self.output];
        let loss = 0.5
            * y.iter()
                .zip(&self.t)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
            / n as f64;
        let mut adj: HashMap<String, Vec<f64>> = HashMap::new();
        adj.insert(
            self.output.clone(),
            y.iter()
                .zip(&self.t)
                .map(|(a, b)| (a - b) / n as f64)
                .collect(),
        );
        let mut grads = Tensors::new();
        let acc =
            |adj: &mut HashMap<String, Vec<f64>>, k: &String, d: Vec<f64>| match adj.get_mut(k) {
                Some(v) => v.iter_mut().zip(d).for_each(|(a, b)| *a += b),
                None => {
                    adj.insert(k.clone(), d);
                }
            };
        for (op, ins, out) in self.nodes.iter().rev() {
            let Some(d) = adj.get(out).cloned() else {
                continue;
            };
            match op {
                Op::Gemm { .. } => {
                    let (xs, ws) = (&val[&ins[0]], &w[&ins[1]]);
                    let (i, o) = (self.width[&ins[0]], self.width[out]);
                    let (mut gw, mut gb, mut gx) =
                        (vec![0.0; o * i], vec![0.0; o], vec![0.0; n * i]);
                    for s in 0..n {
                        for r in 0..o {
                            let dd = d[s * o + r];
                            gb[r] += dd;
                            for c in 0..i {
                                gw[r * i + c] += dd * xs[s * i + c];
                                gx[s * i + c] += dd * ws[r * i + c];
                            }
                        }
                    }
                    grads.insert(ins[1].clone(), gw);
                    if let Some(b) = ins.get(2) {
                        grads.insert(b.clone(), gb);
                    }
                    acc(&mut adj, &ins[0], gx);
                }
                Op::Relu => {
                    let z = &val[&ins[0]];
                    acc(
                        &mut adj,
                        &ins[0],
                        d.iter()
                            .zip(z)
                            .map(|(a, z)| if *z > 0.0 { *a } else { 0.0 })
                            .collect(),
                    );
                }
                Op::Binary { .. } => {
                    acc(&mut adj, &ins[0], d.clone());
                    acc(&mut adj, &ins[1], d);
                }
                _ => unreachable!(),
            }
        }
        (loss, grads)
    }
}

/// x -> fc_in -> relu -> [fc_a -> relu -> fc_b] + skip -> relu -> fc_out: a residual branch.
pub fn residual_model(seed: u64) -> Graph {
    use ecc::ir::{BinaryKind, Constant, DimDecl, ModelMeta, Node, ValueInfo};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut params = std::collections::BTreeMap::new();
    let mut layer = |name: &str, o: usize, i: usize| {
        let b = 1.0 / (i as f32).sqrt();
        params.insert(
            format!("{name}.weight"),
            Constant::f32(
                vec![o, i],
                (0..o * i).map(|_| rng.gen_range(-b..b)).collect(),
            ),
        );
        params.insert(
            format!("{name}.bias"),
            Constant::f32(vec![o], (0..o).map(|_| rng.gen_range(-b..b)).collect()),
        );
    };
    layer("fc_in", 8, 8);
    layer("fc_a", 6, 8);
    layer("fc_b", 8, 6);
    layer("fc_out", 3, 8);
    let gemm = |name: &str, x: &str| Node {
        name: name.into(),
        op: Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        },
        inputs: vec![x.into(), format!("{name}.weight"), format!("{name}.bias")],
        outputs: vec![format!("{name}_out")],
    };
    let relu = |name: &str, x: &str| Node {
        name: name.into(),
        op: Op::Relu,
        inputs: vec![x.into()],
        outputs: vec![format!("{name}_out")],
    };
    let nodes = vec![
        gemm("fc_in", "x"),
        relu("r0", "fc_in_out"),
        gemm("fc_a", "r0_out"),
        relu("ra", "fc_a_out"),
        gemm("fc_b", "ra_out"),
        Node {
            name: "add".into(),
            op: Op::Binary {
                kind: BinaryKind::Add,
                legacy_axis: None,
            },
            inputs: vec!["r0_out".into(), "fc_b_out".into()],
            outputs: vec!["add_out".into()],
        },
        relu("rs", "add_out"),
        gemm("fc_out", "rs_out"),
    ];
    let n = DimDecl::Param("N".into());
    let g = Graph {
        meta: ModelMeta {
            ir_version: 8,
            opsets: vec![(String::new(), 13)],
            ..Default::default()
        },
        inputs: vec![ValueInfo {
            name: "x".into(),
            declared: vec![n.clone(), DimDecl::Value(8)],
            elem_type: 1,
        }],
        outputs: vec![ValueInfo {
            name: "fc_out_out".into(),
            declared: vec![n, DimDecl::Value(3)],
            elem_type: 1,
        }],
        nodes,
        params,
        ..Default::default()
    };
    ecc::import::load_bytes(&ecc::export::to_bytes(&g).unwrap(), &Default::default()).unwrap()
}

pub fn f64s(g: &Graph) -> Tensors {
    g.params
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f32().into_iter().map(f64::from).collect()))
        .collect()
}
