//! ConvTranspose and Resize / Upsample (issue 16 item 4). ConvTranspose against its
//! definition written out directly (output position o = i stride + k dilation - pad_begin,
//! groups, output_padding, output_shape, SAME_UPPER), Resize against worked examples; both
//! differentiated against central differences in f64 (input, weight and bias for
//! ConvTranspose), and exported and read back with the same attributes. The ONNX suites'
//! cases of both ops run in scripts/conformance.sh; their symmetry rules are checked in
//! tests/rules.rs and tests/invariance.rs.

mod common;

use candle_core::DType;
use common::onnx::{
    assert_input_grads, assert_round_trip, float_init, floats_attr, int64_init, int_attr,
    ints_attr, run_f64, string_attr, value,
};
use ecc::import::{load_bytes, ImportOptions};
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use protobuf::{Message, MessageField};

fn one_node(
    op: &str,
    inputs: &[(&str, &[i64])],
    consts: Vec<onnx_protobuf::TensorProto>,
    operands: &[&str],
    attrs: Vec<AttributeProto>,
    opset: i64,
) -> ecc::ir::Graph {
    let mut g = GraphProto::new();
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = "n".into();
    for (name, dims) in inputs {
        g.input.push(value(name, dims));
        n.input.push(name.to_string());
    }
    n.input.extend(operands.iter().map(|s| s.to_string()));
    g.initializer.extend(consts);
    n.output.push("y".into());
    n.attribute = attrs;
    g.node.push(n);
    g.output.push(value("y", &[]));
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    m.graph = MessageField::some(g);
    load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{op}: {e}"))
}

fn seq(n: usize, k: usize) -> Vec<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(k as u64);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn strides_of(d: &[usize]) -> Vec<usize> {
    let mut s = vec![1; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1];
    }
    s
}

/// Every multi-index of `dims`, in order.
fn positions(dims: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = dims.iter().product();
    let s = strides_of(dims);
    (0..n)
        .map(|i| (0..dims.len()).map(|a| (i / s[a]) % dims[a]).collect())
        .collect()
}

/// ConvTranspose by its definition: y[n, g*M/G + m, o] += x[n, c, i] w[c, m, k] for the
/// input channels c of group g, at o = i s + k d - pad_begin inside the output.
#[allow(clippy::too_many_arguments)]
fn conv_transpose_direct(
    x: &[f64],
    xd: &[usize],
    w: &[f64],
    wd: &[usize],
    b: &[f64],
    strides: &[usize],
    dil: &[usize],
    begin: &[usize],
    out: &[usize],
    group: usize,
) -> Vec<f64> {
    let (n, c) = (xd[0], xd[1]);
    let mg = wd[1];
    let m = mg * group;
    let cg = c / group;
    let mut yd = vec![n, m];
    yd.extend_from_slice(out);
    let ys = strides_of(&yd);
    let mut y = vec![0.0; yd.iter().product()];
    for p in positions(&yd) {
        y[p.iter().zip(&ys).map(|(a, b)| a * b).sum::<usize>()] = b[p[1]];
    }
    let (xs, ws) = (strides_of(xd), strides_of(wd));
    for ip in positions(xd) {
        let (bn, ci) = (ip[0], ip[1]);
        let gi = ci / cg;
        for kp in positions(&wd[2..]) {
            let mut o = vec![];
            for a in 0..kp.len() {
                let v = (ip[2 + a] * strides[a] + kp[a] * dil[a]) as i64 - begin[a] as i64;
                if v < 0 || v >= out[a] as i64 {
                    break;
                }
                o.push(v as usize);
            }
            if o.len() < kp.len() {
                continue;
            }
            let xv = x[ip.iter().zip(&xs).map(|(a, b)| a * b).sum::<usize>()];
            for j in 0..mg {
                let mut wi = ci * ws[0] + j * ws[1];
                for a in 0..kp.len() {
                    wi += kp[a] * ws[2 + a];
                }
                let mut yi = bn * ys[0] + (gi * mg + j) * ys[1];
                for a in 0..o.len() {
                    yi += o[a] * ys[2 + a];
                }
                y[yi] += xv * w[wi];
            }
        }
    }
    y
}

struct Geo {
    what: &'static str,
    x: Vec<usize>,
    w: Vec<usize>,
    attrs: Vec<AttributeProto>,
    strides: Vec<usize>,
    dil: Vec<usize>,
    group: usize,
    /// The resolved begin pads and output lengths the definition is evaluated with.
    begin: Vec<usize>,
    out: Vec<usize>,
}

fn geometries() -> Vec<Geo> {
    vec![
        Geo {
            what: "stride 2, pads 1, output_padding 1",
            x: vec![2, 3, 3, 4],
            w: vec![3, 2, 3, 3],
            attrs: vec![
                ints_attr("strides", &[2, 2]),
                ints_attr("pads", &[1, 1, 1, 1]),
                ints_attr("output_padding", &[1, 1]),
            ],
            strides: vec![2, 2],
            dil: vec![1, 1],
            group: 1,
            begin: vec![1, 1],
            out: vec![6, 8],
        },
        Geo {
            what: "group 2, dilation 2, strides (1, 2), asymmetric pads",
            x: vec![1, 4, 4, 3],
            w: vec![4, 3, 2, 3],
            attrs: vec![
                ints_attr("strides", &[1, 2]),
                ints_attr("dilations", &[2, 2]),
                ints_attr("pads", &[0, 1, 2, 0]),
                int_attr("group", 2),
            ],
            strides: vec![1, 2],
            dil: vec![2, 2],
            group: 2,
            begin: vec![0, 1],
            // 3 + 2 + 1 - 0 - 2 = 4; 2*2 + 4 + 1 - 1 - 0 = 8
            out: vec![4, 8],
        },
        Geo {
            what: "1-D, output_shape past the full result",
            x: vec![2, 2, 5],
            w: vec![2, 3, 4],
            attrs: vec![ints_attr("strides", &[3]), ints_attr("output_shape", &[17])],
            strides: vec![3],
            dil: vec![1],
            group: 1,
            // full 3*4 + 4 = 16, total padding -1: begin 0, the output one longer.
            begin: vec![0],
            out: vec![17],
        },
        Geo {
            what: "SAME_UPPER, stride 2",
            x: vec![1, 1, 3, 3],
            w: vec![1, 2, 3, 3],
            attrs: vec![
                ints_attr("strides", &[2, 2]),
                string_attr("auto_pad", "SAME_UPPER"),
            ],
            strides: vec![2, 2],
            dil: vec![1, 1],
            group: 1,
            // full 7, output 6: total 1, begin 0 (the larger half at the end).
            begin: vec![0, 0],
            out: vec![6, 6],
        },
        Geo {
            what: "3-D, stride 2",
            x: vec![1, 2, 2, 2, 2],
            w: vec![2, 2, 2, 2, 2],
            attrs: vec![ints_attr("strides", &[2, 2, 2])],
            strides: vec![2, 2, 2],
            dil: vec![1, 1, 1],
            group: 1,
            begin: vec![0, 0, 0],
            out: vec![4, 4, 4],
        },
    ]
}

#[test]
fn conv_transpose_matches_its_definition_and_gradients() {
    for (k, geo) in geometries().into_iter().enumerate() {
        let i64s = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let m = geo.w[1] * geo.group;
        let g = one_node(
            "ConvTranspose",
            &[
                ("x", &i64s(&geo.x)),
                ("w", &i64s(&geo.w)),
                ("b", &[m as i64]),
            ],
            vec![],
            &[],
            geo.attrs.clone(),
            11,
        );
        let mut yd = vec![geo.x[0], m];
        yd.extend_from_slice(&geo.out);
        assert_eq!(g.shapes["y"].dims, yd, "{}", geo.what);
        let ex = ecc::exec::Executor::with_dtype(&g, DType::F64).unwrap();
        let size = |d: &[usize]| d.iter().product::<usize>();
        let xs = vec![
            (seq(size(&geo.x), k), geo.x.clone()),
            (seq(size(&geo.w), k + 10), geo.w.clone()),
            (seq(m, k + 20), vec![m]),
        ];
        let got = run_f64(&ex, &xs);
        let want = conv_transpose_direct(
            &xs[0].0,
            &geo.x,
            &xs[1].0,
            &geo.w,
            &xs[2].0,
            &geo.strides,
            &geo.dil,
            &geo.begin,
            &geo.out,
            geo.group,
        );
        assert_eq!(got.len(), want.len(), "{}", geo.what);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-12, "{} [{i}]: {a} vs {b}", geo.what);
        }
        assert_input_grads(&ex, &xs, geo.what);
        assert_round_trip(&g, geo.what);
    }
}

/// A transposed convolution that would start before the full result is refused, not
/// computed: a negative begin pad from `output_shape` with SAME_UPPER is the only way to ask.
#[test]
fn conv_transpose_starting_before_the_result_is_refused() {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = 11;
    m.opset_import.push(o);
    let mut g = GraphProto::new();
    g.input.push(value("x", &[1, 1, 3]));
    g.input.push(value("w", &[1, 1, 3]));
    let mut n = NodeProto::new();
    n.op_type = "ConvTranspose".into();
    n.input = vec!["x".into(), "w".into()];
    n.output = vec!["y".into()];
    n.attribute = vec![
        ints_attr("output_shape", &[9]),
        string_attr("auto_pad", "SAME_UPPER"),
    ];
    g.node.push(n);
    g.output.push(value("y", &[]));
    m.graph = MessageField::some(g);
    let e = load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("before the full result"), "{e}");
}

struct ResizeCase {
    what: &'static str,
    op: &'static str,
    opset: i64,
    x: Vec<usize>,
    consts: Vec<onnx_protobuf::TensorProto>,
    operands: Vec<&'static str>,
    attrs: Vec<AttributeProto>,
    out: Vec<usize>,
    /// Worked values for the input 0, 1, 2, ... (all of the output), when given.
    want: Option<Vec<f64>>,
}

fn resize_cases() -> Vec<ResizeCase> {
    vec![
        ResizeCase {
            what: "nearest x2, asymmetric floor (Upsample 9)",
            op: "Upsample",
            opset: 9,
            x: vec![1, 1, 2, 2],
            consts: vec![float_init("s", &[4], &[1.0, 1.0, 2.0, 2.0])],
            operands: vec!["s"],
            attrs: vec![string_attr("mode", "nearest")],
            out: vec![1, 1, 4, 4],
            want: Some(vec![
                0., 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.,
            ]),
        },
        ResizeCase {
            what: "nearest x3 on the last axis (Upsample 7, scales attribute)",
            op: "Upsample",
            opset: 7,
            x: vec![1, 2, 2],
            consts: vec![],
            operands: vec![],
            attrs: vec![floats_attr("scales", &[1.0, 1.0, 3.0])],
            out: vec![1, 2, 6],
            want: Some(vec![0., 0., 0., 1., 1., 1., 2., 2., 2., 3., 3., 3.]),
        },
        ResizeCase {
            what: "linear x2, half_pixel",
            op: "Resize",
            opset: 13,
            x: vec![1, 1, 1, 3],
            consts: vec![float_init("s", &[4], &[1.0, 1.0, 1.0, 2.0])],
            operands: vec!["", "s"],
            attrs: vec![string_attr("mode", "linear")],
            out: vec![1, 1, 1, 6],
            // Source (o + 0.5) / 2 - 0.5: -0.25 (clamped), 0.25, 0.75, 1.25, 1.75, 2.25.
            want: Some(vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.0]),
        },
        ResizeCase {
            what: "cubic, align_corners, sizes",
            op: "Resize",
            opset: 13,
            x: vec![2, 2, 4, 3],
            consts: vec![int64_init("z", &[2, 2, 7, 5])],
            operands: vec!["", "", "z"],
            attrs: vec![
                string_attr("mode", "cubic"),
                string_attr("coordinate_transformation_mode", "align_corners"),
            ],
            out: vec![2, 2, 7, 5],
            want: None,
        },
        ResizeCase {
            what: "nearest, round_prefer_ceil, pytorch_half_pixel, downsample",
            op: "Resize",
            opset: 13,
            x: vec![1, 2, 5, 5],
            consts: vec![float_init("s", &[4], &[1.0, 1.0, 0.6, 0.6])],
            operands: vec!["", "s"],
            attrs: vec![
                string_attr("mode", "nearest"),
                string_attr("nearest_mode", "round_prefer_ceil"),
                string_attr("coordinate_transformation_mode", "pytorch_half_pixel"),
            ],
            out: vec![1, 2, 3, 3],
            want: None,
        },
        ResizeCase {
            what: "linear antialias downsample on axes (3, 2), opset 18",
            op: "Resize",
            opset: 18,
            x: vec![1, 1, 6, 8],
            consts: vec![float_init("s", &[2], &[0.5, 0.75])],
            operands: vec!["", "s"],
            attrs: vec![
                string_attr("mode", "linear"),
                int_attr("antialias", 1),
                ints_attr("axes", &[3, 2]),
            ],
            out: vec![1, 1, 4, 4],
            want: None,
        },
        ResizeCase {
            what: "tf_crop_and_resize, extrapolation 0.5",
            op: "Resize",
            opset: 13,
            x: vec![1, 1, 4, 4],
            consts: vec![
                float_init("roi", &[8], &[0., 0., 0.4, 0.6, 1., 1., 1.2, 1.7]),
                int64_init("z", &[1, 1, 3, 3]),
            ],
            operands: vec!["roi", "", "z"],
            attrs: vec![
                string_attr("mode", "linear"),
                string_attr("coordinate_transformation_mode", "tf_crop_and_resize"),
                common::onnx::float_attr("extrapolation_value", 0.5),
            ],
            out: vec![1, 1, 3, 3],
            want: None,
        },
    ]
}

#[test]
fn resize_matches_worked_examples_and_gradients() {
    for case in resize_cases() {
        let i64s: Vec<i64> = case.x.iter().map(|&d| d as i64).collect();
        let g = one_node(
            case.op,
            &[("x", &i64s)],
            case.consts,
            &case.operands,
            case.attrs,
            case.opset,
        );
        assert_eq!(g.shapes["y"].dims, case.out, "{}", case.what);
        let ex = ecc::exec::Executor::with_dtype(&g, DType::F64).unwrap();
        let n: usize = case.x.iter().product();
        if let Some(want) = &case.want {
            let ramp: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let got = run_f64(&ex, &[(ramp, case.x.clone())]);
            assert_eq!(&got, want, "{}", case.what);
        }
        let xs = vec![(seq(n, 3), case.x.clone())];
        assert_input_grads(&ex, &xs, case.what);
        assert_round_trip(&g, case.what);
    }
}

/// Path-SGD computes its per-weight scale from the network with squared weights; a cubic
/// Resize's negative coefficients would enter those path sums with their signs, so it
/// refuses one (nearest and linear, with coefficients >= 0, pass).
#[test]
fn path_sgd_refuses_a_cubic_resize() {
    use ecc::train::optim::{PathSgd, Sgd};
    for (mode, ok) in [("linear", true), ("cubic", false)] {
        let g = one_node(
            "Resize",
            &[("x", &[1, 1, 2, 2])],
            vec![float_init("s", &[4], &[1.0, 1.0, 2.0, 2.0])],
            &["", "s"],
            vec![string_attr("mode", mode)],
            13,
        );
        let sgd = Sgd::new(Default::default(), 0.0, 0.0);
        match PathSgd::new(&g, sgd) {
            Ok(_) => assert!(ok, "{mode}: accepted"),
            Err(e) => {
                assert!(!ok, "{mode}: {e}");
                assert!(e.to_string().contains("cubic Resize"), "{e}");
            }
        }
    }
}
