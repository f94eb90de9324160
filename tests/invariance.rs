//! Spec §9.1: rescaling every group the analysis reports (c log-uniform in [1/4, 4]) leaves
//! the outputs unchanged; rescaling a blocked unit changes them.

mod common;

use common::fixtures;
use ecc::analysis::{analyze, apply_edits, RuleSet};
use ecc::import::{load_file, ImportOptions};
use ecc::ir::{Graph, Op};
use rand::{Rng, SeedableRng};
use std::path::Path;

use common::{outputs, worst};

/// Returns (groups, invariance error, change from a blocked unit if any).
fn check(name: &str, g: &Graph, batch: usize) -> (usize, f64, Option<f64>) {
    let a = analyze(g, &RuleSet::default_rules());
    let xs = common::random_inputs(g, batch, 11);
    let base = outputs(g, &xs);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let factors: Vec<f32> = (0..a.rescalings())
        .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
        .collect();
    let mut scaled = g.clone();
    a.rescale(&mut scaled, |k| factors[k]);
    let err = worst(&outputs(&scaled, &xs), &base);
    let blocked = (0..a.unit_count())
        .find(|&u| a.blocked(u).is_some())
        .map(|u| {
            let mut b = g.clone();
            apply_edits(&mut b, a.edits(u), 3.0);
            worst(&outputs(&b, &xs), &base)
        });
    println!("{name}: {} rescalings, invariance error {err:.1e}, blocked unit changes output by {blocked:?}", a.rescalings());
    (a.rescalings(), err, blocked)
}

fn assert_invariant(name: &str, g: &Graph, batch: usize) {
    let (h, err, blocked) = check(name, g, batch);
    assert!(h > 0, "{name}: no rescalable unit found");
    assert!(
        err <= 5e-6,
        "{name}: rescaling changed the outputs by {err:e}"
    );
    // The change must stand well clear of the rounding noise of an invariant rescaling. It
    // can be small: LRN with alpha 1e-4 is nearly homogeneous, though not exactly.
    if let Some(b) = blocked {
        assert!(
            b > 10.0 * err.max(1e-7),
            "{name}: rescaling a blocked unit did not change the outputs ({b:e})"
        );
    }
}

#[test]
fn committed_models_are_invariant() {
    for p in common::committed_models() {
        let g = load_file(&p, &ImportOptions::default()).unwrap();
        assert_invariant(&p.display().to_string(), &g, 4);
    }
}

#[test]
fn a_unit_feeding_a_sigmoid_is_blocked_and_matters() {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/mlp-digits.onnx"
    ));
    let mut g = load_file(p, &ImportOptions::default()).unwrap();
    let relu = g.nodes.iter().position(|n| n.op == Op::Relu).unwrap();
    g.nodes[relu].op = Op::Sigmoid;
    let a = analyze(&g, &RuleSet::default_rules());
    let fc1: Vec<usize> = (0..a.unit_count())
        .filter(|&u| g.nodes[a.producer(u)].name == "fc1")
        .collect();
    assert_eq!(fc1.len(), 32);
    assert!(fc1
        .iter()
        .all(|&u| a.blocked(u).is_some_and(|b| b.node == relu)));
    assert_eq!(a.rescalings(), 32, "only fc2's units remain");
    let xs = common::random_inputs(&g, 4, 1);
    let base = outputs(&g, &xs);
    let mut b = g.clone();
    apply_edits(&mut b, a.edits(fc1[0]), 2.0);
    assert!(worst(&outputs(&b, &xs), &base) > 1e-3);
    assert_invariant("mlp-digits with a sigmoid", &g, 4);
}

#[test]
fn mtcnn_models_are_invariant() {
    let Some(fx) = fixtures() else { return };
    let mut pnet = ImportOptions::default();
    pnet.input_shapes
        .insert("input_1".into(), vec![1, 24, 30, 3]);
    for (name, opts) in [
        ("pnet", pnet),
        ("rnet", ImportOptions::default()),
        ("onet", ImportOptions::default()),
    ] {
        let g = load_file(&fx.join(format!("mtcnn/{name}.onnx")), &opts).unwrap();
        assert_invariant(name, &g, 3);
    }
}

/// The pytorch cases are single ops or single layers: none has a hidden unit, so the
/// check there is that the analysis runs, finds nothing to rescale, and that rescaling a
/// (blocked) output unit of the cases with a layer changes the outputs.
#[test]
fn pytorch_cases_with_relu_prelu_pooling_or_layers() {
    let Some(fx) = fixtures() else { return };
    let (mut checked, mut with_units) = (0, 0);
    for folder in ["pytorch-converted", "pytorch-operator"] {
        let mut cases: Vec<_> = std::fs::read_dir(fx.join("onnx").join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        for case in cases {
            let Ok(g) = load_file(&case.join("model.onnx"), &ImportOptions::default()) else {
                continue;
            };
            let relevant = g.nodes.iter().any(|n| {
                matches!(
                    n.op,
                    Op::Relu
                        | Op::PRelu
                        | Op::LeakyRelu { .. }
                        | Op::MaxPool(_)
                        | Op::AveragePool { .. }
                        | Op::Conv(_)
                        | Op::Gemm { .. }
                        | Op::MatMul
                )
            });
            if !relevant {
                continue;
            }
            let name = case.file_name().unwrap().to_string_lossy().to_string();
            let batch = g.shapes[&g.inputs[0].name].dims[0];
            let (h, err, blocked) = check(&name, &g, batch);
            assert_eq!(h, 0, "{name}: a single-op model has no hidden unit");
            assert!(err <= 5e-6, "{name}: {err:e}");
            if let Some(b) = blocked {
                assert!(
                    b > 1e-3,
                    "{name}: rescaling a blocked unit did not change the outputs ({b:e})"
                );
                with_units += 1;
            }
            checked += 1;
        }
    }
    println!(
        "{checked} pytorch cases checked, {with_units} with a layer whose blocked unit matters"
    );
    assert!(checked >= 40 && with_units >= 15);
}

/// Zoo models with their constant weights re-drawn at random: residual ties (resnet50),
/// concatenations (squeezenet, inception_v1, densenet121), batch norm, LRN.
#[test]
fn zoo_models_with_random_weights_are_invariant() {
    let Some(fx) = fixtures() else { return };
    for name in [
        "squeezenet",
        "inception_v1",
        "resnet50",
        "densenet121",
        "bvlc_alexnet",
    ] {
        let mut g = load_file(
            &fx.join(format!("onnx/light/light_{name}.onnx")),
            &ImportOptions::default(),
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for p in g.params.values_mut() {
            let fan_in = (p.len() / p.dims[0].max(1)).max(1) as f32;
            let (lo, hi) = if p.dims.len() >= 2 {
                (-1.0 / fan_in.sqrt(), 1.0 / fan_in.sqrt())
            } else {
                (0.5, 1.5)
            };
            if let ecc::ir::TensorData::F32(v) = &mut p.data {
                v.iter_mut().for_each(|x| *x = rng.gen_range(lo..hi));
            }
        }
        assert_invariant(name, &g, 1);
    }
}

/// cnn-mnist with a Pad and a Slice after its first ReLU (`pads` on the spatial axes, then
/// `starts` of a slice back to 28 x 28). A zero (or reflect, edge, wrap) pad passes the
/// rescaling of conv1's units (the model stays invariant under every reported group); a
/// pad with 1.0 that stays in the output blocks them, and rescaling one changes the output.
#[test]
fn pad_and_slice_pass_or_block_rescalings() {
    use onnx_protobuf::{
        attribute_proto::AttributeType, tensor_proto, AttributeProto, Message, ModelProto,
        NodeProto, TensorProto,
    };
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/cnn-mnist.onnx"
    ))
    .unwrap();
    let with_pad = |mode: &str, value: f32, pads: [i64; 8], starts: [i64; 2]| -> Graph {
        let mut m = ModelProto::parse_from_bytes(&bytes).unwrap();
        let g = m.graph.as_mut().unwrap();
        let relu = g.node.iter().position(|n| n.op_type == "Relu").unwrap();
        let r = g.node[relu].output[0].clone();
        for n in g.node.iter_mut().skip(relu + 1) {
            for i in n.input.iter_mut() {
                if *i == r {
                    *i = "sliced".into();
                }
            }
        }
        let int64 = |name: &str, v: &[i64]| {
            let mut t = TensorProto::new();
            t.name = name.into();
            t.dims = vec![v.len() as i64];
            t.data_type = tensor_proto::DataType::INT64 as i32;
            t.int64_data = v.to_vec();
            t
        };
        g.initializer.push(int64("pads", &pads));
        let mut cv = TensorProto::new();
        cv.name = "pad_value".into();
        cv.data_type = tensor_proto::DataType::FLOAT as i32;
        cv.float_data = vec![value];
        g.initializer.push(cv);
        g.initializer.push(int64("starts", &starts));
        g.initializer
            .push(int64("ends", &[starts[0] + 28, starts[1] + 28]));
        g.initializer.push(int64("axes", &[2, 3]));
        let mut pad = NodeProto::new();
        pad.op_type = "Pad".into();
        pad.name = "pad".into();
        pad.input = vec![r, "pads".into(), "pad_value".into()];
        pad.output = vec!["padded".into()];
        let mut a = AttributeProto::new();
        a.name = "mode".into();
        a.type_ = protobuf::EnumOrUnknown::new(AttributeType::STRING);
        a.s = mode.as_bytes().to_vec();
        pad.attribute.push(a);
        let mut slice = NodeProto::new();
        slice.op_type = "Slice".into();
        slice.name = "slice".into();
        slice.input = vec![
            "padded".into(),
            "starts".into(),
            "ends".into(),
            "axes".into(),
        ];
        slice.output = vec!["sliced".into()];
        g.node.insert(relu + 1, slice);
        g.node.insert(relu + 1, pad);
        ecc::import::load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default()).unwrap()
    };
    let plain = analyze(
        &with_pad("constant", 0.0, [0; 8], [0, 0]),
        &RuleSet::default_rules(),
    )
    .rescalings();
    for mode in ["constant", "reflect", "edge"] {
        let g = with_pad(mode, 0.0, [0, 0, 2, 1, 0, 0, 0, 1], [1, 2]);
        let h = analyze(&g, &RuleSet::default_rules()).rescalings();
        assert_eq!(
            h, plain,
            "{mode}: a pad off the channel axis passes every rescaling"
        );
        assert_invariant(mode, &g, 2);
    }
    // One row of 1.0 on top, kept by the slice: conv1's 8 units are blocked at the pad.
    let g = with_pad("constant", 1.0, [0, 0, 1, 0, 0, 0, 0, 0], [0, 0]);
    let a = analyze(&g, &RuleSet::default_rules());
    let pad = g.nodes.iter().position(|n| n.name == "pad").unwrap();
    let blocked = (0..a.unit_count())
        .filter(|&u| a.blocked(u).is_some_and(|b| b.node == pad))
        .count();
    assert_eq!((blocked, a.rescalings()), (8, plain - 8));
    assert_invariant("pad with 1.0", &g, 2);
}

/// conv (1 -> 4, stride 2) -> ReLU -> ConvTranspose (4 -> 4, stride 2, `group`) -> ReLU ->
/// Resize (linear, `scales`) -> conv 1x1 (-> 2) -> ReLU -> global pool -> Gemm, opset 13,
/// seeded weights.
fn resample_net(group: i64, scales: [f32; 4]) -> Graph {
    use common::onnx::{float_attr, float_init, int_attr, ints_attr, string_attr, value};
    use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut g = GraphProto::new();
    let mut init = |name: &str, dims: &[i64]| {
        let n: i64 = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-0.5..0.5)).collect();
        float_init(name, dims, &v)
    };
    let mid = 4 * scales[1] as i64;
    let inits = [
        init("w1", &[4, 1, 3, 3]),
        init("b1", &[4]),
        init("w2", &[4, 4 / group, 3, 3]),
        init("b2", &[4]),
        init("w3", &[2, mid, 1, 1]),
        init("b3", &[2]),
        init("w4", &[3, 2]),
        init("b4", &[3]),
        float_init("scales", &[4], &scales),
    ];
    g.initializer.extend(inits);
    let node = |op: &str, ins: &[&str], out: &str, attrs: Vec<_>| {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = out.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        n.attribute = attrs;
        n
    };
    g.node = vec![
        node(
            "Conv",
            &["x", "w1", "b1"],
            "c1",
            vec![
                ints_attr("strides", &[2, 2]),
                ints_attr("pads", &[1, 1, 1, 1]),
            ],
        ),
        node("Relu", &["c1"], "r1", vec![]),
        node(
            "ConvTranspose",
            &["r1", "w2", "b2"],
            "t",
            vec![
                ints_attr("strides", &[2, 2]),
                ints_attr("pads", &[1, 1, 1, 1]),
                ints_attr("output_padding", &[1, 1]),
                int_attr("group", group),
            ],
        ),
        node("Relu", &["t"], "r2", vec![]),
        node(
            "Resize",
            &["r2", "", "scales"],
            "up",
            vec![string_attr("mode", "linear")],
        ),
        node("Conv", &["up", "w3", "b3"], "c3", vec![]),
        node("Relu", &["c3"], "r3", vec![]),
        node("GlobalAveragePool", &["r3"], "p", vec![]),
        node("Flatten", &["p"], "f", vec![]),
        node(
            "Gemm",
            &["f", "w4", "b4"],
            "y",
            vec![int_attr("transB", 1), float_attr("alpha", 1.0)],
        ),
    ];
    g.input.push(value("x", &[1, 1, 6, 6]));
    g.output.push(value("y", &[1, 3]));
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = 13;
    m.opset_import.push(o);
    m.graph = protobuf::MessageField::some(g);
    ecc::import::load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default()).unwrap()
}

/// ConvTranspose (group 1) is a layer: its input channels absorb a scale (the weights that
/// read channel c are W[c, ..]) and its output channels are units; a Resize off the channel
/// axis passes a scale. A grouped ConvTranspose is not followed (it blocks what reaches it
/// and has no units), and a Resize that scales the channel axis mixes channels (it blocks).
/// PyTorch's export of a decoder (both ops as its exporter writes them) is invariant too.
#[test]
fn conv_transpose_and_resize_pass_or_block_rescalings() {
    let rescalings = |g: &Graph| analyze(g, &RuleSet::default_rules()).rescalings();
    let g = resample_net(1, [1.0, 1.0, 2.0, 2.0]);
    assert_eq!(rescalings(&g), 4 + 4 + 2);
    assert_invariant("conv-transpose, resize", &g, 2);
    let g = resample_net(2, [1.0, 1.0, 2.0, 2.0]);
    assert_eq!(
        rescalings(&g),
        2,
        "conv1 blocked, the grouped transpose has no units"
    );
    assert_invariant("grouped conv-transpose", &g, 2);
    let g = resample_net(1, [1.0, 2.0, 2.0, 2.0]);
    assert_eq!(
        rescalings(&g),
        4 + 2,
        "the transpose's units blocked at the resize"
    );
    assert_invariant("resize of the channel axis", &g, 2);
    let decoder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch-export/decoder.onnx");
    let g = load_file(&decoder, &ImportOptions::default()).unwrap();
    assert_eq!(rescalings(&g), 18);
    assert_invariant("torch decoder", &g, 2);
}
