//! The elementwise ops of issue 16 item 4: HardSigmoid, HardSwish, Gelu (both forms), and
//! Max, Min, Mean of several inputs with broadcasting. Each is imported from a model written
//! here, run in f64 against its ONNX formula, differentiated against central differences
//! (f64), and exported and read back with its attributes. Their symmetry rules (Max and Min
//! tie their inputs as Add does; the three activations block a scale) are checked
//! numerically in tests/rules.rs.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::onnx::{
    assert_fd, assert_round_trip, float_attr, string_attr, value, weighted_sum_grads,
};
use ecc::import::{load_bytes, ImportOptions};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto,
};
use protobuf::{EnumOrUnknown, Message, MessageField};

const DIMS: [i64; 4] = [2, 3, 2, 2];

/// One node `op` on inputs x0.. (all of DIMS) and, with `bias`, a constant of shape (3,1,1)
/// broadcast against them; output y.
fn model(op: &str, inputs: usize, bias: bool, attrs: Vec<AttributeProto>, opset: i64) -> Vec<u8> {
    let mut g = GraphProto::new();
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = "n".into();
    for k in 0..inputs {
        g.input.push(value(&format!("x{k}"), &DIMS));
        n.input.push(format!("x{k}"));
    }
    if bias {
        let mut t = TensorProto::new();
        t.name = "c".into();
        t.dims = vec![3, 1, 1];
        t.data_type = tensor_proto::DataType::FLOAT as i32;
        t.float_data = vec![0.25, -0.5, 1.5];
        g.initializer.push(t);
        n.input.push("c".into());
    }
    n.output.push("y".into());
    n.attribute = attrs;
    g.node.push(n);
    g.output.push(value("y", &DIMS));
    let mut m = ModelProto::new();
    m.ir_version = 10;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    m.graph = MessageField::some(g);
    m.write_to_bytes().unwrap()
}

fn erf(x: f64) -> f64 {
    // erf by its Maclaurin series (|x| < 3 here): enough terms for 1e-15.
    let mut term = x;
    let mut sum = x;
    for k in 1..200 {
        term *= -x * x / k as f64;
        sum += term / (2 * k + 1) as f64;
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

struct Case {
    op: &'static str,
    inputs: usize,
    bias: bool,
    attrs: Vec<AttributeProto>,
    opset: i64,
    /// The ONNX formula over the inputs' values at one position (the bias value last).
    f: fn(&[f64]) -> f64,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            op: "HardSigmoid",
            inputs: 1,
            bias: false,
            attrs: vec![float_attr("alpha", 0.3), float_attr("beta", 0.4)],
            opset: 6,
            f: |v| (0.3f32 as f64 * v[0] + 0.4f32 as f64).clamp(0.0, 1.0),
        },
        Case {
            op: "HardSigmoid",
            inputs: 1,
            bias: false,
            attrs: vec![],
            opset: 22,
            f: |v| (0.2f32 as f64 * v[0] + 0.5).clamp(0.0, 1.0),
        },
        Case {
            op: "HardSwish",
            inputs: 1,
            bias: false,
            attrs: vec![],
            opset: 14,
            f: |v| v[0] * (v[0] / 6.0 + 0.5).clamp(0.0, 1.0),
        },
        Case {
            op: "Gelu",
            inputs: 1,
            bias: false,
            attrs: vec![],
            opset: 20,
            f: |v| 0.5 * v[0] * (1.0 + erf(v[0] / 2f64.sqrt())),
        },
        Case {
            op: "Gelu",
            inputs: 1,
            bias: false,
            attrs: vec![string_attr("approximate", "tanh")],
            opset: 20,
            f: |v| {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * v[0] * (1.0 + (k * (v[0] + 0.044715 * v[0] * v[0] * v[0])).tanh())
            },
        },
        Case {
            op: "Max",
            inputs: 2,
            bias: true,
            attrs: vec![],
            opset: 13,
            f: |v| v[0].max(v[1]).max(v[2]),
        },
        Case {
            op: "Min",
            inputs: 2,
            bias: true,
            attrs: vec![],
            opset: 8,
            f: |v| v[0].min(v[1]).min(v[2]),
        },
        Case {
            op: "Mean",
            inputs: 3,
            bias: false,
            attrs: vec![],
            opset: 13,
            f: |v| (v[0] + v[1] + v[2]) / 3.0,
        },
        Case {
            op: "Max",
            inputs: 1,
            bias: false,
            attrs: vec![],
            opset: 13,
            f: |v| v[0],
        },
    ]
}

/// Input k's values: spread over [-2.5, 2.5], away from the kinks of HardSigmoid/HardSwish
/// (where central differences would straddle a corner) and with no ties between inputs.
fn input(k: usize) -> Vec<f64> {
    let n: usize = DIMS.iter().product::<i64>() as usize;
    (0..n)
        .map(|i| {
            let t = ((i * 7 + k * 5) % n) as f64 / n as f64;
            -2.5 + 5.0 * t + 0.013 * (k as f64 + 1.0)
        })
        .collect()
}

fn bias_at(i: usize) -> f64 {
    let per = (DIMS[2] * DIMS[3]) as usize;
    [0.25, -0.5, 1.5][(i / per) % 3]
}

#[test]
fn elementwise_ops_match_their_formulas_and_gradients() {
    let dev = Device::Cpu;
    let dims: Vec<usize> = DIMS.iter().map(|&d| d as usize).collect();
    for case in cases() {
        let what = format!("{} opset {}", case.op, case.opset);
        let bytes = model(
            case.op,
            case.inputs,
            case.bias,
            case.attrs.clone(),
            case.opset,
        );
        let g =
            load_bytes(&bytes, &ImportOptions::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ex = ecc::exec::Executor::with_dtype(&g, DType::F64).unwrap();
        let xs: Vec<Vec<f64>> = (0..case.inputs).map(input).collect();
        let run = |xs: &[Vec<f64>]| -> Vec<f64> {
            let ts: Vec<Tensor> = xs
                .iter()
                .map(|v| Tensor::from_vec(v.clone(), dims.as_slice(), &dev).unwrap())
                .collect();
            ex.forward(&ts).unwrap()[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        // Forward: the formula, position by position.
        let y = run(&xs);
        for (i, &yi) in y.iter().enumerate() {
            let mut at: Vec<f64> = xs.iter().map(|x| x[i]).collect();
            if case.bias {
                at.push(bias_at(i));
            }
            let want = (case.f)(&at);
            assert!(
                (yi - want).abs() <= 1e-12 * (1.0 + want.abs()),
                "{what} [{i}]: {yi} vs {want}"
            );
        }
        // Backward: d(sum(y * r))/dx_k by autograd against central differences.
        let r: Vec<f64> = (0..y.len()).map(|i| 0.5 + (i % 5) as f64 * 0.3).collect();
        let vars: Vec<Var> = xs
            .iter()
            .map(|v| {
                Var::from_tensor(&Tensor::from_vec(v.clone(), dims.as_slice(), &dev).unwrap())
                    .unwrap()
            })
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let rt = Tensor::from_vec(r.clone(), dims.as_slice(), &dev).unwrap();
        let loss = (&ex.forward(&ts).unwrap()[0] * &rt)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (k, v) in vars.iter().enumerate() {
            let auto = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let loss = |i: usize, d: f64| {
                let mut p = xs.clone();
                p[k][i] += d;
                run(&p).iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
            };
            assert_fd(&auto, loss, &format!("{what} d/dx{k}"));
        }
        assert_round_trip(&g, &what);
    }
}

#[test]
fn gelu_with_an_unknown_approximation_is_refused() {
    let bytes = model(
        "Gelu",
        1,
        false,
        vec![string_attr("approximate", "cubic")],
        20,
    );
    let e = load_bytes(&bytes, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("approximate \"cubic\"") && e.contains("\"tanh\""),
        "{e}"
    );
}

/// A model of one Pad (opset 19, pads and value as constant inputs) or Slice (opset 13) on a
/// (1, 3, 2) input.
fn layout_model(op: &str, consts: &[(&str, Vec<i64>)], fill: Option<f32>, mode: &str) -> Vec<u8> {
    let mut g = GraphProto::new();
    g.input.push(value("x", &[1, 3, 2]));
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = "n".into();
    n.input.push("x".into());
    for (name, v) in consts {
        let mut t = TensorProto::new();
        t.name = name.to_string();
        t.dims = vec![v.len() as i64];
        t.data_type = tensor_proto::DataType::INT64 as i32;
        t.int64_data = v.clone();
        g.initializer.push(t);
        n.input.push(name.to_string());
    }
    if let Some(v) = fill {
        let mut t = TensorProto::new();
        t.name = "value".into();
        t.data_type = tensor_proto::DataType::FLOAT as i32;
        t.float_data = vec![v];
        g.initializer.push(t);
        n.input.push("value".into());
    }
    if op == "Pad" {
        n.attribute.push(string_attr("mode", mode));
    }
    n.output.push("y".into());
    g.node.push(n);
    g.output.push(value("y", &[]));
    let mut m = ModelProto::new();
    m.ir_version = 10;
    let mut o = OperatorSetIdProto::new();
    o.version = if op == "Pad" { 19 } else { 13 };
    m.opset_import.push(o);
    m.graph = MessageField::some(g);
    m.write_to_bytes().unwrap()
}

/// Pad in its four modes (the examples of the ONNX operator documentation, on axes 1 and 2
/// of a (1, 3, 2) input; negative pads crop) and Slice (negative steps, out-of-range ends):
/// outputs as documented, gradients against central differences (f64), export round trip.
#[test]
fn pad_and_slice_match_the_onnx_examples() {
    let data = vec![1.0, 1.2, 2.3, 3.4, 4.5, 5.7];
    let cases: Vec<(Vec<u8>, Vec<usize>, Vec<f64>)> = vec![
        (
            layout_model(
                "Pad",
                &[("pads", vec![0, 0, 2, 0, 0, 0])],
                Some(0.0),
                "constant",
            ),
            vec![1, 3, 4],
            vec![0.0, 0.0, 1.0, 1.2, 0.0, 0.0, 2.3, 3.4, 0.0, 0.0, 4.5, 5.7],
        ),
        (
            layout_model("Pad", &[("pads", vec![0, 0, 2, 0, 0, 0])], None, "reflect"),
            vec![1, 3, 4],
            vec![1.0, 1.2, 1.0, 1.2, 2.3, 3.4, 2.3, 3.4, 4.5, 5.7, 4.5, 5.7],
        ),
        (
            layout_model("Pad", &[("pads", vec![0, 0, 2, 0, 0, 0])], None, "edge"),
            vec![1, 3, 4],
            vec![1.0, 1.0, 1.0, 1.2, 2.3, 2.3, 2.3, 3.4, 4.5, 4.5, 4.5, 5.7],
        ),
        (
            layout_model("Pad", &[("pads", vec![0, 2, 1, 0, 1, 1])], None, "wrap"),
            vec![1, 6, 4],
            vec![
                3.4, 2.3, 3.4, 2.3, 5.7, 4.5, 5.7, 4.5, 1.2, 1.0, 1.2, 1.0, 3.4, 2.3, 3.4, 2.3,
                5.7, 4.5, 5.7, 4.5, 1.2, 1.0, 1.2, 1.0,
            ],
        ),
        (
            // Crop one row at the top, add a column of 7.5 at the right.
            layout_model(
                "Pad",
                &[("pads", vec![0, -1, 0, 0, 0, 1])],
                Some(7.5),
                "constant",
            ),
            vec![1, 2, 3],
            vec![2.3, 3.4, 7.5, 4.5, 5.7, 7.5],
        ),
        (
            // Rows from the last backwards (end far out of range), column 1 only.
            layout_model(
                "Slice",
                &[
                    ("starts", vec![-1, 1]),
                    ("ends", vec![-100, 2]),
                    ("axes", vec![1, 2]),
                    ("steps", vec![-1, 1]),
                ],
                None,
                "",
            ),
            vec![1, 3, 1],
            vec![5.7, 3.4, 1.2],
        ),
    ];
    let dev = Device::Cpu;
    for (k, (bytes, dims, want)) in cases.into_iter().enumerate() {
        let g = load_bytes(&bytes, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("case {k}: {e}"));
        let ex = ecc::exec::Executor::with_dtype(&g, DType::F64).unwrap();
        let run = |x: &[f64]| -> Tensor {
            ex.forward(&[Tensor::from_vec(x.to_vec(), (1, 3, 2), &dev).unwrap()])
                .unwrap()[0]
                .clone()
        };
        let y = run(&data);
        assert_eq!(y.dims(), dims.as_slice(), "case {k}");
        let got = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
            "case {k}: {got:?} vs {want:?}"
        );
        // Gradient of sum(y * r): autograd against central differences.
        let r: Vec<f64> = (0..got.len()).map(|i| 0.3 + i as f64 * 0.7).collect();
        let auto = weighted_sum_grads(&ex, &[(data.clone(), [1, 3, 2].to_vec())], &r).remove(0);
        let loss = |i: usize, d: f64| {
            let mut x = data.clone();
            x[i] += d;
            let y = run(&x).flatten_all().unwrap().to_vec1::<f64>().unwrap();
            y.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
        };
        assert_fd(&auto, loss, &format!("case {k}"));
        assert_round_trip(&g, &format!("case {k}"));
    }
}

/// Split, read as one Slice per output: sizes from the `split` input (opset 13) or equal
/// parts (opset 11), on axes 1 and 2 of a (1, 3, 2) input; the outputs as documented, and
/// the export (Slices) computes the same.
#[test]
fn split_is_read_as_slices() {
    let data = vec![1.0, 1.2, 2.3, 3.4, 4.5, 5.7];
    let build = |opset: i64, axis: i64, sizes: Option<Vec<i64>>, outs: usize| -> Vec<u8> {
        let mut g = GraphProto::new();
        g.input.push(value("x", &[1, 3, 2]));
        let mut n = NodeProto::new();
        n.op_type = "Split".into();
        n.name = "split".into();
        n.input.push("x".into());
        if let Some(s) = sizes {
            let mut t = TensorProto::new();
            t.name = "sizes".into();
            t.dims = vec![s.len() as i64];
            t.data_type = tensor_proto::DataType::INT64 as i32;
            t.int64_data = s;
            g.initializer.push(t);
            n.input.push("sizes".into());
        }
        let mut a = AttributeProto::new();
        a.name = "axis".into();
        a.type_ = EnumOrUnknown::new(AttributeType::INT);
        a.i = axis;
        n.attribute.push(a);
        for k in 0..outs {
            n.output.push(format!("y{k}"));
            g.output.push(value(&format!("y{k}"), &[]));
        }
        g.node.push(n);
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let mut o = OperatorSetIdProto::new();
        o.version = opset;
        m.opset_import.push(o);
        m.graph = MessageField::some(g);
        m.write_to_bytes().unwrap()
    };
    let dev = Device::Cpu;
    let cases: Vec<(Vec<u8>, Vec<Vec<f64>>)> = vec![
        (
            build(13, 1, Some(vec![1, 2]), 2),
            vec![vec![1.0, 1.2], vec![2.3, 3.4, 4.5, 5.7]],
        ),
        (
            build(11, -1, None, 2),
            vec![vec![1.0, 2.3, 4.5], vec![1.2, 3.4, 5.7]],
        ),
    ];
    for (k, (bytes, want)) in cases.into_iter().enumerate() {
        let g = load_bytes(&bytes, &ImportOptions::default()).unwrap();
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.onnx_name()).collect();
        assert_eq!(ops, ["Slice", "Slice"], "case {k}");
        let x = Tensor::from_vec(data.clone(), (1, 3, 2), &dev).unwrap();
        let run = |g: &ecc::ir::Graph| -> Vec<Vec<f64>> {
            ecc::exec::Executor::with_dtype(g, DType::F64)
                .unwrap()
                .forward(std::slice::from_ref(&x))
                .unwrap()
                .iter()
                .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
                .collect()
        };
        assert_eq!(run(&g), want, "case {k}");
        let back = load_bytes(
            &ecc::export::to_bytes(&g).unwrap(),
            &ImportOptions::default(),
        )
        .unwrap();
        assert_eq!(run(&back), want, "case {k}: export");
    }
}

/// InstanceNormalization (epsilon 1e-3): per sample and channel over the spatial positions,
/// then scale and B per channel; the formula in f64, gradients of x, scale and B against
/// central differences, export round trip.
#[test]
fn instance_normalization_matches_its_formula_and_gradients() {
    let mut g = GraphProto::new();
    g.input.push(value("x", &DIMS));
    for (name, v) in [
        ("scale", vec![0.5f32, 1.5, -2.0]),
        ("b", vec![0.25, -0.5, 1.0]),
    ] {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = vec![3];
        t.data_type = tensor_proto::DataType::FLOAT as i32;
        t.float_data = v;
        g.initializer.push(t);
    }
    let mut n = NodeProto::new();
    n.op_type = "InstanceNormalization".into();
    n.name = "in".into();
    n.input = vec!["x".into(), "scale".into(), "b".into()];
    n.output = vec!["y".into()];
    n.attribute.push(float_attr("epsilon", 1e-3));
    g.node.push(n);
    g.output.push(value("y", &DIMS));
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = 6;
    m.opset_import.push(o);
    m.graph = MessageField::some(g);
    let graph = load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default()).unwrap();
    let ex = ecc::exec::Executor::with_dtype(&graph, DType::F64).unwrap();
    let dims: Vec<usize> = DIMS.iter().map(|&d| d as usize).collect();
    let dev = Device::Cpu;
    let x0 = input(0);
    let run = |x: &[f64]| -> Vec<f64> {
        let t = Tensor::from_vec(x.to_vec(), dims.as_slice(), &dev).unwrap();
        ex.forward(&[t]).unwrap()[0]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let y = run(&x0);
    let (scale, b) = ([0.5f32 as f64, 1.5, -2.0], [0.25f32 as f64, -0.5, 1.0]);
    let eps = 1e-3f32 as f64;
    for (p, plane) in x0.chunks(4).enumerate() {
        let m = plane.iter().sum::<f64>() / 4.0;
        let var = plane.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 4.0;
        for (j, v) in plane.iter().enumerate() {
            let want = (v - m) / (var + eps).sqrt() * scale[p % 3] + b[p % 3];
            assert!(
                (y[p * 4 + j] - want).abs() < 1e-12,
                "[{p}, {j}]: {} vs {want}",
                y[p * 4 + j]
            );
        }
    }
    let r: Vec<f64> = (0..y.len()).map(|i| 0.5 + (i % 5) as f64 * 0.3).collect();
    let auto = weighted_sum_grads(&ex, &[(x0.clone(), dims.to_vec())], &r).remove(0);
    let loss = |i: usize, d: f64| {
        let mut x = x0.clone();
        x[i] += d;
        run(&x).iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    assert_fd(&auto, loss, "InstanceNormalization d/dx");
    assert_round_trip(&graph, "InstanceNormalization");
}
