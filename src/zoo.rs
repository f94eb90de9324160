//! Generated models: the architectures `ecc new` writes, from a short spec string, with
//! PyTorch's default initialization (uniform in ±1/sqrt(fan_in)) from a seed.
//!
//! - `mlp:784-64-64-10`: dense layers (Gemm, transB=1, as PyTorch exports Linear) with
//!   ReLU between them; the output is logits.
//! - `cnn:1x28x28-c8-p-c16-p-64-10`: input C x H x W, then `cK` (3x3 conv, pad 1, K
//!   channels, ReLU), `p` (2x2 max pool, stride 2), and numbers (dense layers; a Flatten is
//!   put before the first; ReLU after every dense layer but the last).

use crate::error::{Error, Result};
use crate::ir::{Constant, ConvAttrs, DimDecl, Graph, ModelMeta, Node, Op, PoolAttrs, ValueInfo};
use rand::{Rng, SeedableRng};

/// One layer of a spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv(usize),
    Pool,
    Dense(usize),
}

/// A parsed spec: the input dims (without batch) and the layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub input: Vec<usize>,
    pub layers: Vec<Layer>,
}

fn num(tok: &str, spec: &str) -> Result<usize> {
    match tok.parse::<usize>() {
        Ok(v) if (1..=1 << 20).contains(&v) => Ok(v),
        _ => Err(Error::usage(format!(
            "model spec '{spec}': '{tok}' is not a size from 1 to 1048576"
        ))),
    }
}

impl Spec {
    pub fn parse(s: &str) -> Result<Spec> {
        let (kind, body) = s.split_once(':').ok_or_else(|| {
            Error::usage(format!(
                "model spec '{s}': expected mlp:SIZES or cnn:CxHxW-LAYERS"
            ))
        })?;
        let toks: Vec<&str> = body.split('-').collect();
        let spec = match kind {
            "mlp" => {
                if toks.len() < 2 {
                    return Err(Error::usage(format!(
                        "model spec '{s}': an MLP needs at least input and output sizes"
                    )));
                }
                Spec {
                    input: vec![num(toks[0], s)?],
                    layers: toks[1..]
                        .iter()
                        .map(|t| num(t, s).map(Layer::Dense))
                        .collect::<Result<_>>()?,
                }
            }
            "cnn" => {
                let input = toks[0]
                    .split('x')
                    .map(|t| num(t, s))
                    .collect::<Result<Vec<_>>>()?;
                if input.len() != 3 {
                    return Err(Error::usage(format!(
                        "model spec '{s}': a CNN input is CxHxW, got '{}'",
                        toks[0]
                    )));
                }
                let mut layers = vec![];
                for t in &toks[1..] {
                    layers.push(if *t == "p" {
                        Layer::Pool
                    } else if let Some(k) = t.strip_prefix('c') {
                        Layer::Conv(num(k, s)?)
                    } else {
                        Layer::Dense(num(t, s)?)
                    });
                }
                let first_dense = layers.iter().position(|l| matches!(l, Layer::Dense(_)));
                match first_dense {
                    None => {
                        return Err(Error::usage(format!(
                            "model spec '{s}': a CNN must end in dense layers"
                        )))
                    }
                    Some(i) if layers[i..].iter().any(|l| !matches!(l, Layer::Dense(_))) => {
                        return Err(Error::usage(format!(
                            "model spec '{s}': conv and pool layers must come before dense ones"
                        )))
                    }
                    _ => {}
                }
                Spec { input, layers }
            }
            other => {
                return Err(Error::usage(format!(
                    "model spec '{s}': unknown kind '{other}' (mlp or cnn)"
                )))
            }
        };
        if !matches!(spec.layers.last(), Some(Layer::Dense(_))) {
            return Err(Error::usage(format!(
                "model spec '{s}': the last layer must be dense"
            )));
        }
        Ok(spec)
    }
}

struct Builder {
    rng: rand_chacha::ChaCha8Rng,
    bias: bool,
    nodes: Vec<Node>,
    params: Vec<(String, Constant)>,
    cur: String,
}

impl Builder {
    fn uniform(&mut self, dims: Vec<usize>, fan_in: usize) -> Constant {
        let b = 1.0 / (fan_in as f32).sqrt();
        let n = dims.iter().product();
        Constant::f32(dims, (0..n).map(|_| self.rng.gen_range(-b..b)).collect())
    }
    fn node(&mut self, name: String, op: Op, extra: Vec<String>) {
        let out = format!("{name}_out");
        let mut inputs = vec![self.cur.clone()];
        inputs.extend(extra);
        self.nodes.push(Node {
            name,
            op,
            inputs,
            outputs: vec![out.clone()],
        });
        self.cur = out;
    }
    fn layer(&mut self, name: &str, op: Op, w_dims: Vec<usize>, fan_in: usize) {
        let w = self.uniform(w_dims.clone(), fan_in);
        let mut extra = vec![format!("{name}.weight")];
        self.params.push((extra[0].clone(), w));
        if self.bias {
            let b = self.uniform(vec![w_dims[0]], fan_in);
            extra.push(format!("{name}.bias"));
            self.params.push((extra[1].clone(), b));
        }
        self.node(name.to_string(), op, extra);
    }
}

/// Build the model of a spec. `bias: false` leaves out every bias.
pub fn build(spec: &Spec, seed: u64, bias: bool) -> Result<Graph> {
    let mut b = Builder {
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        bias,
        nodes: vec![],
        params: vec![],
        cur: "input".into(),
    };
    let (mut c, mut h, mut w) = match spec.input.as_slice() {
        [c, h, w] => (*c, *h, *w),
        [n] => (*n, 1, 1),
        _ => return Err(Error::usage("a spec input is one size or CxHxW")),
    };
    let spatial = spec.input.len() == 3;
    let (mut nconv, mut npool, mut ndense) = (0, 0, 0);
    let n_dense = spec
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Dense(_)))
        .count();
    let mut flat = !spatial;
    for layer in &spec.layers {
        match layer {
            Layer::Conv(k) => {
                nconv += 1;
                let op = Op::Conv(ConvAttrs {
                    kernel: vec![3, 3],
                    strides: vec![1, 1],
                    pads: vec![1; 4],
                    dilations: vec![1, 1],
                    group: 1,
                });
                b.layer(&format!("conv{nconv}"), op, vec![*k, c, 3, 3], c * 9);
                b.node(format!("conv{nconv}_relu"), Op::Relu, vec![]);
                c = *k;
            }
            Layer::Pool => {
                npool += 1;
                if h < 2 || w < 2 {
                    return Err(Error::usage(format!(
                        "pool {npool} has a {h}x{w} input, too small for 2x2"
                    )));
                }
                let op = Op::MaxPool(PoolAttrs {
                    kernel: vec![2, 2],
                    strides: vec![2, 2],
                    pads: vec![0; 4],
                    dilations: vec![1, 1],
                    ceil_mode: false,
                });
                b.node(format!("pool{npool}"), op, vec![]);
                h /= 2;
                w /= 2;
            }
            Layer::Dense(k) => {
                if !flat {
                    b.node("flatten".into(), Op::Flatten { axis: 1 }, vec![]);
                    c *= h * w;
                    flat = true;
                }
                ndense += 1;
                let op = Op::Gemm {
                    alpha: 1.0,
                    beta: 1.0,
                    trans_a: false,
                    trans_b: true,
                };
                b.layer(&format!("fc{ndense}"), op, vec![*k, c], c);
                if ndense < n_dense {
                    b.node(format!("fc{ndense}_relu"), Op::Relu, vec![]);
                }
                c = *k;
            }
        }
    }
    // The last node's output is the model output.
    let last = b.nodes.last_mut().expect("a spec has layers");
    last.outputs = vec!["logits".into()];
    let batch = DimDecl::Param("N".into());
    let mut declared = vec![batch.clone()];
    declared.extend(spec.input.iter().map(|&d| DimDecl::Value(d as i64)));
    let g = Graph {
        meta: ModelMeta {
            ir_version: 8,
            opsets: vec![(String::new(), 13)],
            producer_name: "ecc".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph_name: "ecc_generated".into(),
            ..Default::default()
        },
        inputs: vec![ValueInfo {
            name: "input".into(),
            declared,
            elem_type: 1,
        }],
        outputs: vec![ValueInfo {
            name: "logits".into(),
            declared: vec![batch, DimDecl::Value(c as i64)],
            elem_type: 1,
        }],
        nodes: b.nodes,
        params: b.params.into_iter().collect(),
        ..Default::default()
    };
    // A round trip through the exporter and importer checks the graph and fills in shapes.
    crate::import::load_bytes(&crate::export::to_bytes(&g)?, &Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_build() {
        let g = build(&Spec::parse("mlp:8-5-3").unwrap(), 0, true).unwrap();
        assert_eq!(g.param_count(), 8 * 5 + 5 + 5 * 3 + 3);
        let g = build(&Spec::parse("cnn:1x8x8-c4-p-c6-p-10").unwrap(), 0, false).unwrap();
        assert_eq!(g.param_count(), 4 * 9 + 6 * 4 * 9 + 10 * 6 * 2 * 2);
        assert_eq!(g.shapes["logits"].dims, vec![1, 10]);
    }

    #[test]
    fn bad_specs_fail_with_a_message() {
        for s in [
            "mlp:5",
            "mlp:5-x",
            "cnn:1x8-c4-10",
            "cnn:1x8x8-10-c4-10",
            "rnn:3-4",
            "mlp:0-3",
            "cnn:1x8x8-c4",
        ] {
            let e = Spec::parse(s).unwrap_err();
            assert!(e.to_string().contains(s), "{e}");
        }
    }

    #[test]
    fn same_seed_same_weights() {
        let s = Spec::parse("mlp:6-4-2").unwrap();
        assert_eq!(
            build(&s, 3, true).unwrap().params,
            build(&s, 3, true).unwrap().params
        );
        assert_ne!(
            build(&s, 3, true).unwrap().params,
            build(&s, 4, true).unwrap().params
        );
    }
}
