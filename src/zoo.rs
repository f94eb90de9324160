//! Generated models: the architectures `ecc new` writes, from a short spec string, with
//! PyTorch's default initialization (uniform in ±1/sqrt(fan_in)) from a seed.
//!
//! - `mlp:784-64-64-10`: dense layers (Gemm, transB=1, as PyTorch exports Linear) with
//!   ReLU between them; the output is logits.
//! - `cnn:1x28x28-c8-p-c16-p-64-10`: input C x H x W, then `cK` (3x3 conv, pad 1, K
//!   channels, ReLU), `b` right after a `cK` (BatchNormalization between the conv and its
//!   ReLU; the conv then has no bias, which BN would make redundant, spec §11), `p` (2x2 max
//!   pool, stride 2), and numbers (dense layers; a Flatten is put before the first; ReLU
//!   after every dense layer but the last).
//! - `resnet:3x32x32-n3` (ResNet-20; n = 5, 9 give ResNet-32, -56): the CIFAR ResNet of He
//!   et al. 2016: a 3x3 conv with BN and ReLU, three stages of n basic blocks (two 3x3
//!   convs with BN; the first block of stages 2 and 3 halves the resolution with stride 2),
//!   the block's input added to its output before the ReLU, then global average pooling and
//!   a dense layer. Shortcuts are identities where the shapes agree and projections (1x1
//!   conv, stride 2, with BN: He et al.'s option B) where they change. Options after n:
//!   `wA.B.C` stage widths (default 16.32.64), `kK` classes (default 10), `nobn` no
//!   BatchNormalization (the network BN folds into at initialization), `he` He et al.'s
//!   initialization of the conv and dense weights (variance 2/fan_in: uniform in
//!   ±sqrt(6/fan_in), PyTorch's `kaiming_uniform_` with ReLU gain; the classifier's bias
//!   as by default), which passes a signal through deep nets without BN.
//! - `plain:3x32x32-n3`: the matching PlainNet, the same without shortcuts.
//!
//! Every conv's depth is 6n + 2 for the residual kinds. BatchNormalization starts at
//! scale 1, bias 0, running mean 0 and variance 1, momentum 0.9 (PyTorch's 0.1), eps 1e-5.

use crate::error::{Error, Result};
use crate::ir::{Constant, ConvAttrs, DimDecl, Graph, ModelMeta, Node, Op, PoolAttrs, ValueInfo};
use rand::{Rng, SeedableRng};

/// One layer of a spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv(usize),
    /// BatchNormalization after the conv before it.
    BatchNorm,
    Pool,
    Dense(usize),
}

/// A parsed spec: the input dims (without batch) and the layers, or a residual network.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub input: Vec<usize>,
    pub layers: Vec<Layer>,
    /// `resnet:` and `plain:` specs.
    pub residual: Option<Residual>,
}

/// The CIFAR-style ResNet / PlainNet of a `resnet:` or `plain:` spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    /// Basic blocks per stage.
    pub n: usize,
    pub widths: [usize; 3],
    pub classes: usize,
    /// ResNet (true) or PlainNet (false).
    pub shortcuts: bool,
    /// BatchNormalization after every conv (false with the `nobn` option: the network BN
    /// folds into at initialization, where Path-SGD applies).
    pub bn: bool,
    /// He initialization of the weights (`he`): variance 2/fan_in instead of PyTorch's
    /// default 1/(3 fan_in).
    pub he: bool,
}

/// `CxHxW` of a spec.
fn chw(tok: &str, s: &str) -> Result<Vec<usize>> {
    let input = tok
        .split('x')
        .map(|t| num(t, s))
        .collect::<Result<Vec<_>>>()?;
    if input.len() != 3 {
        return Err(Error::usage(format!(
            "model spec '{s}': an image input is CxHxW, got '{tok}'"
        )));
    }
    Ok(input)
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
                "model spec '{s}': expected mlp:SIZES, cnn:CxHxW-LAYERS, resnet:CxHxW-nN or plain:CxHxW-nN"
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
                    residual: None,
                }
            }
            "resnet" | "plain" => {
                let input = chw(toks[0], s)?;
                let mut r = Residual {
                    n: 0,
                    widths: [16, 32, 64],
                    classes: 10,
                    shortcuts: kind == "resnet",
                    bn: true,
                    he: false,
                };
                for t in &toks[1..] {
                    if *t == "nobn" {
                        r.bn = false;
                    } else if *t == "he" {
                        r.he = true;
                    } else if let Some(n) = t.strip_prefix('n') {
                        r.n = num(n, s)?;
                    } else if let Some(k) = t.strip_prefix('k') {
                        r.classes = num(k, s)?;
                    } else if let Some(w) = t.strip_prefix('w') {
                        let w: Vec<usize> =
                            w.split('.').map(|v| num(v, s)).collect::<Result<_>>()?;
                        r.widths = w.try_into().map_err(|_| {
                            Error::usage(format!(
                                "model spec '{s}': widths are wA.B.C (three stages)"
                            ))
                        })?;
                    } else {
                        return Err(Error::usage(format!(
                            "model spec '{s}': unknown token '{t}' (nN blocks per stage, wA.B.C widths, kK classes, nobn, he)"
                        )));
                    }
                }
                if r.n == 0 {
                    return Err(Error::usage(format!(
                        "model spec '{s}': give the blocks per stage, e.g. {kind}:3x32x32-n3 (depth 6n+2)"
                    )));
                }
                if input[1] < 4 || input[2] < 4 {
                    return Err(Error::usage(format!(
                        "model spec '{s}': the input is halved twice, {}x{} is too small",
                        input[1], input[2]
                    )));
                }
                return Ok(Spec {
                    input,
                    layers: vec![],
                    residual: Some(r),
                });
            }
            "cnn" => {
                let input = chw(toks[0], s)?;
                let mut layers = vec![];
                for t in &toks[1..] {
                    layers.push(if *t == "p" {
                        Layer::Pool
                    } else if *t == "b" {
                        if !matches!(layers.last(), Some(Layer::Conv(_))) {
                            return Err(Error::usage(format!(
                                "model spec '{s}': 'b' (BatchNormalization) comes right after a conv"
                            )));
                        }
                        Layer::BatchNorm
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
                Spec {
                    input,
                    layers,
                    residual: None,
                }
            }
            other => {
                return Err(Error::usage(format!(
                    "model spec '{s}': unknown kind '{other}' (mlp, cnn, resnet or plain)"
                )))
            }
        };
        if spec.residual.is_none() && !matches!(spec.layers.last(), Some(Layer::Dense(_))) {
            return Err(Error::usage(format!(
                "model spec '{s}': the last layer must be dense"
            )));
        }
        Ok(spec)
    }

    /// Whether `s` is a spec (`mlp:`, `cnn:`, `resnet:` or `plain:` ...) rather than, say,
    /// a file name.
    pub fn is_spec(s: &str) -> bool {
        s.split_once(':')
            .is_some_and(|(k, _)| ["mlp", "cnn", "resnet", "plain"].contains(&k))
    }

    /// The spec `s` with another input, the rest kept: `dims` (C, H, W) for the image
    /// kinds (`plain:1x28x28-n3` with 3x32x32 is `plain:3x32x32-n3`), their product for an
    /// MLP (`mlp:784-64-10` becomes `mlp:3072-64-10`). The result is checked as a spec.
    pub fn with_input(s: &str, dims: &[usize]) -> Result<String> {
        let (kind, body) = s.split_once(':').unwrap_or((s, ""));
        let rest = body.split_once('-').map_or("", |(_, r)| r);
        let input = match kind {
            "mlp" => dims.iter().product::<usize>().to_string(),
            _ if dims.len() == 3 => {
                let d: Vec<String> = dims.iter().map(usize::to_string).collect();
                d.join("x")
            }
            _ => {
                return Err(Error::usage(format!(
                    "model spec '{s}': an image input is CxHxW, the data's samples are {dims:?}"
                )))
            }
        };
        let out = format!("{kind}:{input}-{rest}");
        Spec::parse(&out)?;
        Ok(out)
    }
}

struct Builder {
    rng: rand_chacha::ChaCha8Rng,
    bias: bool,
    nodes: Vec<Node>,
    params: Vec<(String, Constant)>,
    cur: String,
    /// `conv_bn` puts a BatchNormalization after its conv.
    bn: bool,
    /// Weights uniform in ±sqrt(6/fan_in) (He) instead of ±1/sqrt(fan_in); biases as ever.
    he: bool,
    /// A parameter over the importer's size limit (`ir::MAX_ELEMENTS`), refused by `build`
    /// instead of allocated.
    too_large: Option<String>,
}

impl Builder {
    fn uniform(&mut self, dims: Vec<usize>, fan_in: usize) -> Constant {
        self.uniform_bound(dims, 1.0 / (fan_in as f32).sqrt())
    }
    fn weights(&mut self, dims: Vec<usize>, fan_in: usize) -> Constant {
        if self.he {
            self.uniform_bound(dims, (6.0 / fan_in as f32).sqrt())
        } else {
            self.uniform(dims, fan_in)
        }
    }
    fn uniform_bound(&mut self, dims: Vec<usize>, b: f32) -> Constant {
        let shape = crate::ir::Shape::fixed(dims.clone());
        if let Err(e) = shape.check("a parameter") {
            self.too_large.get_or_insert(e.to_string());
            return Constant::f32(vec![0], vec![]);
        }
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
        let bias = self.bias;
        self.layer_with(name, op, w_dims, fan_in, bias)
    }
    fn layer_with(&mut self, name: &str, op: Op, w_dims: Vec<usize>, fan_in: usize, bias: bool) {
        let w = self.weights(w_dims.clone(), fan_in);
        let mut extra = vec![format!("{name}.weight")];
        self.params.push((extra[0].clone(), w));
        if bias {
            let b = self.uniform(vec![w_dims[0]], fan_in);
            extra.push(format!("{name}.bias"));
            self.params.push((extra[1].clone(), b));
        }
        self.node(name.to_string(), op, extra);
    }
    /// BatchNormalization of `c` channels at PyTorch's initial values (scale 1, bias 0,
    /// running mean 0, running variance 1), PyTorch's momentum 0.1 written the ONNX way.
    fn batch_norm(&mut self, name: &str, c: usize) {
        let mut extra = vec![];
        for (p, v) in [
            ("weight", 1.0),
            ("bias", 0.0),
            ("running_mean", 0.0),
            ("running_var", 1.0),
        ] {
            let key = format!("{name}.{p}");
            self.params
                .push((key.clone(), Constant::f32(vec![c], vec![v; c])));
            extra.push(key);
        }
        let op = Op::BatchNorm {
            epsilon: 1e-5,
            momentum: 0.9,
        };
        self.node(name.to_string(), op, extra);
    }
    /// A bias-free k x k conv (pad k / 2) from `cin` to `cout` channels, then BN, then a ReLU
    /// with `relu`.
    fn conv_bn(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) {
        let op = Op::Conv(ConvAttrs {
            kernel: vec![k, k],
            strides: vec![stride, stride],
            pads: vec![k / 2; 4],
            dilations: vec![1, 1],
            group: 1,
        });
        self.layer_with(name, op, vec![cout, cin, k, k], cin * k * k, false);
        if self.bn {
            self.batch_norm(&format!("{name}.bn"), cout);
        }
        if relu {
            self.node(format!("{name}.relu"), Op::Relu, vec![]);
        }
    }
    /// The body of a `resnet:` / `plain:` spec, from `self.cur` (C x H x W) to the logits.
    fn residual(&mut self, r: &Residual, c_in: usize) {
        self.bn = r.bn;
        self.he = r.he;
        self.conv_bn("conv1", c_in, r.widths[0], 3, 1, true);
        let mut c = r.widths[0];
        for (s, &w) in r.widths.iter().enumerate() {
            for j in 0..r.n {
                let name = format!("layer{}.{j}", s + 1);
                let stride = if s > 0 && j == 0 { 2 } else { 1 };
                let input = self.cur.clone();
                self.conv_bn(&format!("{name}.conv1"), c, w, 3, stride, true);
                self.conv_bn(&format!("{name}.conv2"), w, w, 3, 1, false);
                if r.shortcuts {
                    let body = self.cur.clone();
                    let short = if stride != 1 || c != w {
                        self.cur = input;
                        self.conv_bn(&format!("{name}.shortcut"), c, w, 1, stride, false);
                        self.cur.clone()
                    } else {
                        input
                    };
                    self.cur = body;
                    let add = Op::Binary {
                        kind: crate::ir::BinaryKind::Add,
                        legacy_axis: None,
                    };
                    self.node(format!("{name}.add"), add, vec![short]);
                }
                self.node(format!("{name}.relu"), Op::Relu, vec![]);
                c = w;
            }
        }
        self.node("avgpool".into(), Op::GlobalAveragePool, vec![]);
        self.node("flatten".into(), Op::Flatten { axis: 1 }, vec![]);
        let fc = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        };
        self.layer_with("fc", fc, vec![r.classes, c], c, self.bias);
    }
}

/// Build the model of a spec. `bias: false` leaves out every bias.
pub fn build(spec: &Spec, seed: u64, bias: bool) -> Result<Graph> {
    let mut b = Builder {
        bn: true,
        he: false,
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        bias,
        nodes: vec![],
        params: vec![],
        cur: "input".into(),
        too_large: None,
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
    if let Some(r) = &spec.residual {
        b.residual(r, c);
        c = r.classes;
    }
    for (i, layer) in spec.layers.iter().enumerate() {
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
                let bn = spec.layers.get(i + 1) == Some(&Layer::BatchNorm);
                let bias = b.bias && !bn;
                b.layer_with(&format!("conv{nconv}"), op, vec![*k, c, 3, 3], c * 9, bias);
                if bn {
                    b.batch_norm(&format!("conv{nconv}_bn"), *k);
                }
                b.node(format!("conv{nconv}_relu"), Op::Relu, vec![]);
                c = *k;
            }
            Layer::BatchNorm => {}
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
    if let Some(e) = b.too_large {
        return Err(Error::usage(format!("model spec: {e}")));
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

    /// Another input for a spec: the first token replaced, the rest kept, the result checked.
    #[test]
    fn a_spec_takes_another_input() {
        let cifar = [3, 32, 32];
        for (s, want) in [
            ("plain:1x28x28-n3-w8.16.32", "plain:3x32x32-n3-w8.16.32"),
            ("resnet:1x28x28-n1-nobn-he", "resnet:3x32x32-n1-nobn-he"),
            ("cnn:1x28x28-c8-b-p-64-10", "cnn:3x32x32-c8-b-p-64-10"),
            ("mlp:784-64-10", "mlp:3072-64-10"),
        ] {
            assert_eq!(Spec::with_input(s, &cifar).unwrap(), want);
        }
        assert!(Spec::is_spec("plain:1x28x28-n3") && !Spec::is_spec("models/a.onnx"));
        assert!(!Spec::is_spec("c:/models/a.onnx"));
        // Too small for the spec's pools: an error when it is built, as for any spec.
        let small = Spec::with_input("cnn:1x28x28-c8-p-c8-p-c8-p-10", &[1, 4, 4]).unwrap();
        let e = build(&Spec::parse(&small).unwrap(), 0, true).unwrap_err();
        assert!(e.to_string().contains("too small for 2x2"), "{e}");
        let e = Spec::with_input("plain:1x28x28-n3", &[64]).unwrap_err();
        assert!(e.to_string().contains("an image input is CxHxW"), "{e}");
    }

    #[test]
    fn specs_parse_and_build() {
        let g = build(&Spec::parse("mlp:8-5-3").unwrap(), 0, true).unwrap();
        assert_eq!(g.param_count(), 8 * 5 + 5 + 5 * 3 + 3);
        let g = build(&Spec::parse("cnn:1x8x8-c4-p-c6-p-10").unwrap(), 0, false).unwrap();
        assert_eq!(g.param_count(), 4 * 9 + 6 * 4 * 9 + 10 * 6 * 2 * 2);
        assert_eq!(g.shapes["logits"].dims, vec![1, 10]);
        // Over the importer's size limit: refused before anything is allocated.
        let e = build(&Spec::parse("mlp:1048576-1048576-10").unwrap(), 0, true).unwrap_err();
        assert!(e.to_string().contains("absurd size"), "{e}");
        let e = build(&Spec::parse("cnn:1x100000x100000-c4-10").unwrap(), 0, true).unwrap_err();
        assert!(e.to_string().contains("absurd size"), "{e}");
    }

    /// ResNet-20 (n = 3) and PlainNet-20: 19 3x3 convs and a dense layer (depth 6n + 2),
    /// a BatchNormalization after every conv, two projection shortcuts (stages 2 and 3) in
    /// the ResNet, 9 additions; any input size that can be halved twice.
    #[test]
    fn residual_specs_build_resnet_and_plainnet() {
        let count =
            |g: &Graph, f: &dyn Fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
        let conv3 = |op: &Op| matches!(op, Op::Conv(a) if a.kernel == [3, 3]);
        let conv1 = |op: &Op| matches!(op, Op::Conv(a) if a.kernel == [1, 1]);
        let bn = |op: &Op| matches!(op, Op::BatchNorm { .. });
        let add = |op: &Op| matches!(op, Op::Binary { .. });
        for (spec, input) in [
            ("resnet:3x32x32-n3", [3, 32, 32]),
            ("resnet:1x28x28-n3", [1, 28, 28]),
        ] {
            let g = build(&Spec::parse(spec).unwrap(), 0, true).unwrap();
            assert_eq!(count(&g, &conv3), 19, "{spec}");
            assert_eq!(count(&g, &conv1), 2, "{spec}");
            assert_eq!(count(&g, &bn), 21, "{spec}");
            assert_eq!(count(&g, &add), 9, "{spec}");
            assert_eq!(g.shapes["logits"].dims, vec![1, 10]);
            assert_eq!(g.shapes[&g.inputs[0].name].dims[1..], input);
            // 3x3 convs: 16·C·9 + (16·16·9)·6 + 16·32·9 + (32·32·9)·5 + 32·64·9 + (64·64·9)·5;
            // projections 16·32 + 32·64; BN 4 per channel; fc 64·10 + 10.
            let c = input[0];
            let convs = 16 * c * 9 + 6 * 2304 + 4608 + 5 * 9216 + 18432 + 5 * 36864 + 512 + 2048;
            let bns = 4 * (16 * 7 + 32 * 7 + 64 * 7);
            assert_eq!(g.param_count(), convs + bns + 650, "{spec}");
        }
        let p = build(
            &Spec::parse("plain:1x28x28-n3-w8.16.32-k7").unwrap(),
            0,
            true,
        )
        .unwrap();
        assert_eq!(count(&p, &conv3), 19);
        assert_eq!(count(&p, &conv1) + count(&p, &add), 0);
        assert_eq!(p.shapes["logits"].dims, vec![1, 7]);
        // `nobn`: the same convs and initial weights, no BN (the network BN folds into at
        // its initial statistics), the ReLUs kept.
        for spec in ["plain:1x28x28-n3-w8.16.32", "resnet:1x28x28-n3-w8.16.32"] {
            let with = build(&Spec::parse(spec).unwrap(), 5, true).unwrap();
            let without = build(&Spec::parse(&format!("{spec}-nobn")).unwrap(), 5, true).unwrap();
            assert_eq!(count(&without, &bn), 0, "{spec}");
            assert_eq!(count(&without, &conv3), count(&with, &conv3));
            let relu = |op: &Op| matches!(op, Op::Relu);
            assert_eq!(count(&without, &relu), count(&with, &relu));
            for (k, v) in &without.params {
                assert_eq!(v.as_f32(), with.params[k].as_f32(), "{spec}: {k}");
            }
        }
        // `he`: the same draws, weights scaled by sqrt(6/fan_in) / (1/sqrt(fan_in)) =
        // sqrt(6) (variance 2/fan_in), the classifier's bias as by default.
        let plain = build(
            &Spec::parse("plain:1x28x28-n1-w4.8.8-nobn").unwrap(),
            3,
            true,
        )
        .unwrap();
        let he = build(
            &Spec::parse("plain:1x28x28-n1-w4.8.8-nobn-he").unwrap(),
            3,
            true,
        )
        .unwrap();
        for (k, v) in &he.params {
            let (a, b) = (v.as_f32(), plain.params[k].as_f32());
            let gain = if k.ends_with(".weight") {
                6f32.sqrt()
            } else {
                1.0
            };
            for (x, y) in a.iter().zip(b) {
                assert!((x - gain * y).abs() <= 1e-6 * x.abs().max(1.0), "{k}");
            }
        }
        // `--no-bias` (bias: false) leaves out the classifier's bias too, the only one of a
        // BN-free net; the weights are the same draws.
        for spec in [
            "plain:1x28x28-n1-w4.8.8-nobn-he",
            "resnet:1x28x28-n1-w4.8.8-nobn",
        ] {
            let spec = Spec::parse(spec).unwrap();
            let (with, without) = (
                build(&spec, 3, true).unwrap(),
                build(&spec, 3, false).unwrap(),
            );
            assert!(with.params.contains_key("fc.bias"));
            assert!(
                !without.params.keys().any(|k| k.ends_with("bias")),
                "{spec:?}"
            );
            assert_eq!(without.params.len() + 1, with.params.len());
            for (k, v) in &without.params {
                assert_eq!(v.as_f32(), with.params[k].as_f32(), "{k}");
            }
        }
        // `b` in a cnn spec: conv (no bias) -> BN -> ReLU.
        let g = build(&Spec::parse("cnn:1x8x8-c4-b-p-10").unwrap(), 0, true).unwrap();
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.onnx_name()).collect();
        assert_eq!(ops[..3], ["Conv", "BatchNormalization", "Relu"]);
        assert_eq!(g.nodes[0].inputs.len(), 2, "no conv bias before BN");
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
            "cnn:1x8x8-b-c4-10",
            "resnet:3x32x32",
            "resnet:3x32x32-n0",
            "resnet:3x32x32-n3-w8.16",
            "plain:3x2x2-n1",
            "resnet:3x32-n3",
            "resnet:3x32x32-n3-q",
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
