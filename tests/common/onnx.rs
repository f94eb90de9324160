//! Small ONNX models written in the tests: value infos, attributes, one-node models, and the
//! checks every op test makes (central differences in f64, export round trip).

use candle_core::{Device, Tensor, Var};
use ecc::import::{load_bytes, ImportOptions};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto, tensor_shape_proto, type_proto, AttributeProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};

/// A float tensor ValueInfo of the given dims.
pub fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut t = type_proto::Tensor::new();
    t.elem_type = 1;
    let mut shape = TensorShapeProto::new();
    for &d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(d));
        shape.dim.push(dim);
    }
    t.shape = MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = MessageField::some(ty);
    v
}

fn attr(name: &str, t: AttributeType) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(t);
    a
}

pub fn float_attr(name: &str, f: f32) -> AttributeProto {
    let mut a = attr(name, AttributeType::FLOAT);
    a.f = f;
    a
}

pub fn int_attr(name: &str, i: i64) -> AttributeProto {
    let mut a = attr(name, AttributeType::INT);
    a.i = i;
    a
}

pub fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = attr(name, AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

pub fn floats_attr(name: &str, v: &[f32]) -> AttributeProto {
    let mut a = attr(name, AttributeType::FLOATS);
    a.floats = v.to_vec();
    a
}

pub fn string_attr(name: &str, s: &str) -> AttributeProto {
    let mut a = attr(name, AttributeType::STRING);
    a.s = s.as_bytes().to_vec();
    a
}

/// An initializer: float or int64 values of the given dims.
pub fn float_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = tensor_proto::DataType::FLOAT as i32;
    t.float_data = v.to_vec();
    t
}

pub fn int64_init(name: &str, v: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = vec![v.len() as i64];
    t.data_type = tensor_proto::DataType::INT64 as i32;
    t.int64_data = v.to_vec();
    t
}

/// Autograd's gradient `auto` against central differences of `loss(i, d)` (the loss with
/// input scalar i moved by d), in f64.
pub fn assert_fd(auto: &[f64], loss: impl Fn(usize, f64) -> f64, what: &str) {
    let h = 1e-6;
    for (i, &a) in auto.iter().enumerate() {
        let fd = (loss(i, h) - loss(i, -h)) / (2.0 * h);
        assert!(
            (a - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{what} [{i}]: autograd {a} vs fd {fd}"
        );
    }
}

/// Export and read back: the same op and attributes on every node.
pub fn assert_round_trip(g: &ecc::ir::Graph, what: &str) {
    let back = load_bytes(
        &ecc::export::to_bytes(g).unwrap(),
        &ImportOptions::default(),
    )
    .unwrap();
    let ops = |g: &ecc::ir::Graph| g.nodes.iter().map(|n| n.op.clone()).collect::<Vec<_>>();
    assert_eq!(ops(&back), ops(g), "{what}");
}

/// The model `ex` (f64) run on `xs` (each with its dims): its first output, flattened.
pub fn run_f64(ex: &ecc::exec::Executor, xs: &[(Vec<f64>, Vec<usize>)]) -> Vec<f64> {
    let ts: Vec<Tensor> = xs
        .iter()
        .map(|(v, d)| Tensor::from_vec(v.clone(), d.as_slice(), &Device::Cpu).unwrap())
        .collect();
    ex.forward(&ts).unwrap()[0]
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// d(sum(y * r))/dx_k by autograd for every input k of `ex` (f64) at `xs`; y its first
/// output.
pub fn weighted_sum_grads(
    ex: &ecc::exec::Executor,
    xs: &[(Vec<f64>, Vec<usize>)],
    r: &[f64],
) -> Vec<Vec<f64>> {
    let vars: Vec<Var> = xs
        .iter()
        .map(|(v, d)| {
            Var::from_tensor(&Tensor::from_vec(v.clone(), d.as_slice(), &Device::Cpu).unwrap())
                .unwrap()
        })
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = &ex.forward(&ts).unwrap()[0];
    let rt = Tensor::from_vec(r.to_vec(), y.dims(), &Device::Cpu).unwrap();
    let grads = (y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

/// Every input's gradient of sum(y * r) by autograd against central differences (f64).
pub fn assert_input_grads(ex: &ecc::exec::Executor, xs: &[(Vec<f64>, Vec<usize>)], what: &str) {
    let n = run_f64(ex, xs).len();
    let r: Vec<f64> = (0..n).map(|i| 0.5 + (i % 5) as f64 * 0.3).collect();
    let grads = weighted_sum_grads(ex, xs, &r);
    for (k, auto) in grads.iter().enumerate() {
        let loss = |i: usize, d: f64| {
            let mut p = xs.to_vec();
            p[k].0[i] += d;
            run_f64(ex, &p)
                .iter()
                .zip(&r)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        assert_fd(auto, loss, &format!("{what} d/dx{k}"));
    }
}
