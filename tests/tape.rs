//! The executor's tape (`exec::tape`, the backward pass of `ecc train`) against candle's
//! autograd over the whole graph: the same loss, parameter gradients and running statistics,
//! bit for bit, on graphs that take every kind of tape step (ecc's kernels, reshapes, the
//! per-node candle fallback, a fan-out of two, graph outputs that are parameters' readers).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use ecc::exec::Executor;
use std::collections::BTreeMap;

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

type Run = (u32, BTreeMap<String, Vec<u32>>, BTreeMap<String, Vec<u32>>);

/// (loss, parameter gradients, parameter values after the forward pass: the running
/// statistics moved) of one cross-entropy step, with the tape or with candle's graph.
fn run(g: &ecc::ir::Graph, x: &Tensor, y: &Tensor, tape: bool) -> Run {
    let ex = Executor::new(g).unwrap();
    let (loss, grads) = if tape {
        let (outs, tape) = ex.forward_tape(std::slice::from_ref(x), 7).unwrap();
        let out = Var::from_tensor(&outs[0]).unwrap();
        let loss = ecc::train::cross_entropy(&out.flatten_from(1).unwrap(), y).unwrap();
        let mut douts = vec![None; outs.len()];
        douts[0] = loss.backward().unwrap().remove(out.as_tensor());
        (loss, tape.backward(&ex, &douts).unwrap())
    } else {
        let outs = ex.forward_train(std::slice::from_ref(x), 7).unwrap();
        let loss = ecc::train::cross_entropy(&outs[0].flatten_from(1).unwrap(), y).unwrap();
        let store = loss.backward().unwrap();
        (loss, ex.grads_by_name(&store))
    };
    let values = ex
        .params()
        .iter()
        .map(|(k, v)| (k.clone(), bits(v.as_tensor())))
        .collect();
    (
        loss.to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .to_bits(),
        grads.iter().map(|(k, t)| (k.clone(), bits(t))).collect(),
        values,
    )
}

fn zoo(spec: &str, bias: bool) -> ecc::ir::Graph {
    ecc::zoo::build(&ecc::zoo::Spec::parse(spec).unwrap(), 3, bias).unwrap()
}

fn fixture(name: &str) -> ecc::ir::Graph {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    ecc::import::load_file(path.as_ref(), &Default::default()).unwrap()
}

#[test]
fn the_tape_gives_candles_gradients_bit_for_bit() {
    let cases = [
        // BN in training mode, residual fan-out, add-ReLU, global pooling (fallback),
        // flatten, dense; and without BN (conv biases).
        ("resnet", zoo("resnet:3x8x8-n1-w4.8.8", false)),
        ("resnet nobn", zoo("resnet:3x8x8-n1-w4.8.8-nobn", true)),
        ("plainnet", zoo("plain:1x8x8-n1-w4.4.8", false)),
        // Max pooling, BN in a CNN, dense layers with biases.
        ("cnn", zoo("cnn:1x8x8-c4-b-p-c8-p-16-10", true)),
        ("mlp", zoo("mlp:64-32-32-10", true)),
        // PyTorch exports: BN and ReduceMean; PReLU (a parameter in the fallback);
        // ConvTranspose and Resize.
        ("bn-mean", fixture("torch-export/bn-mean.onnx")),
        ("cnn-prelu", fixture("torch-export/cnn-prelu.onnx")),
        ("decoder", fixture("torch-export/decoder.onnx")),
        ("rescnn", fixture("torch-ec/rescnn.onnx")),
        // BN in its training form (extra outputs, training_mode=1).
        ("bn-resnet", fixture("bn-resnet/model-train.onnx")),
    ];
    for (name, g) in cases {
        let g = ecc::train::logits_graph(&g);
        let n = 12;
        let x = common::random_inputs(&g, n, 5).remove(0);
        let y = Tensor::from_vec(
            (0..n as u32).map(|i| i * 7 % 10).collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )
        .unwrap();
        let (l0, g0, v0) = run(&g, &x, &y, false);
        let (l1, g1, v1) = run(&g, &x, &y, true);
        assert_eq!(l0, l1, "{name}: loss");
        assert!(!g0.is_empty(), "{name}: no gradients");
        assert_eq!(
            g0.keys().collect::<Vec<_>>(),
            g1.keys().collect::<Vec<_>>(),
            "{name}: which parameters have gradients"
        );
        for (k, a) in &g0 {
            assert!(a == &g1[k], "{name}: gradient of {k}");
        }
        assert!(v0 == v1, "{name}: running statistics");
    }
}
