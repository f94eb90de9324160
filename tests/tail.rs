//! Post-processing after the outputs (issue 16 item 3): an ArgMax and an `ai.onnx.ml`
//! ArrayFeatureExtractor (the label branch skl2onnx writes) after mlp-digits' logits. ecc
//! imports and trains the network, keeps the tail without running it, and writes it back:
//! the exported model has the original outputs in their order and the tail's nodes,
//! initializers and opsets.

mod common;

use common::ecc;
use ecc::import::{load_bytes, ImportOptions};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto, type_proto, AttributeProto, Message, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
};
use protobuf::MessageField;

fn int_output(name: &str) -> ValueInfoProto {
    let mut t = type_proto::Tensor::new();
    t.elem_type = tensor_proto::DataType::INT64 as i32;
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = MessageField::some(ty);
    v
}

/// mlp-digits with `ArgMax(logits) -> label` and `ArrayFeatureExtractor(classes, label) ->
/// class` (ai.onnx.ml); outputs [logits, label, class], or [label, class] without logits.
fn with_label_branch(keep_logits: bool) -> ModelProto {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/mlp-digits.onnx"
    ))
    .unwrap();
    let mut m = ModelProto::parse_from_bytes(&bytes).unwrap();
    let mut ml = OperatorSetIdProto::new();
    ml.domain = "ai.onnx.ml".into();
    ml.version = 3;
    m.opset_import.push(ml);
    let g = m.graph.as_mut().unwrap();
    let logits = g.output[0].name.clone();
    let mut argmax = NodeProto::new();
    argmax.op_type = "ArgMax".into();
    argmax.name = "argmax".into();
    argmax.input = vec![logits];
    argmax.output = vec!["label".into()];
    let mut axis = AttributeProto::new();
    axis.name = "axis".into();
    axis.type_ = protobuf::EnumOrUnknown::new(AttributeType::INT);
    axis.i = 1;
    argmax.attribute.push(axis);
    let mut classes = TensorProto::new();
    classes.name = "classes".into();
    classes.dims = vec![10];
    classes.data_type = tensor_proto::DataType::INT64 as i32;
    classes.int64_data = (100..110).collect();
    g.initializer.push(classes);
    let mut afe = NodeProto::new();
    afe.op_type = "ArrayFeatureExtractor".into();
    afe.domain = "ai.onnx.ml".into();
    afe.name = "afe".into();
    afe.input = vec!["classes".into(), "label".into()];
    afe.output = vec!["class".into()];
    g.node.push(argmax);
    g.node.push(afe);
    if !keep_logits {
        g.output.clear();
    }
    g.output.push(int_output("label"));
    g.output.push(int_output("class"));
    m
}

fn outputs(m: &ModelProto) -> Vec<String> {
    m.graph.output.iter().map(|o| o.name.clone()).collect()
}

#[test]
fn the_label_branch_is_kept_and_written_back() {
    for keep_logits in [true, false] {
        let m = with_label_branch(keep_logits);
        let g = load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default()).unwrap();
        let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["logits"], "ecc computes the logits");
        let note = g.meta.notes.join("\n");
        assert!(
            note.contains("2 nodes after the outputs (ArgMax, ArrayFeatureExtractor) kept"),
            "{note}"
        );
        assert!(!g.consts.contains_key("classes") && !g.params.contains_key("classes"));
        // Export: the original outputs, in order, and the tail as read.
        let back = ModelProto::parse_from_bytes(&ecc::export::to_bytes(&g).unwrap()).unwrap();
        assert_eq!(outputs(&back), outputs(&m), "keep_logits={keep_logits}");
        let ops: Vec<&str> = back.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops[ops.len() - 2..], ["ArgMax", "ArrayFeatureExtractor"]);
        assert!(back.graph.initializer.iter().any(|t| t.name == "classes"));
        assert!(back.opset_import.iter().any(|o| o.domain == "ai.onnx.ml"));
        // And it imports again the same way.
        let again = load_bytes(&back.write_to_bytes().unwrap(), &ImportOptions::default()).unwrap();
        assert_eq!(again.meta.tail, g.meta.tail);
        assert_eq!(again.params, g.params);
    }
}

/// An op ecc does not read in the middle of the network is still refused by name: only
/// post-processing ops start a tail.
#[test]
fn other_unknown_ops_are_still_refused() {
    let mut m = with_label_branch(true);
    let g = m.graph.as_mut().unwrap();
    let relu = g.node.iter().position(|n| n.op_type == "Relu").unwrap();
    g.node[relu].op_type = "Celu".into();
    let e = load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Celu"), "{e}");
}

/// `ecc train` trains the network under the tail and writes the model back with its label
/// outputs.
#[test]
fn a_model_with_a_label_branch_trains_and_keeps_it() {
    let dir = common::Scratch::new("tail");
    let src = dir.join("labelled.onnx");
    let out = dir.join("trained.onnx");
    let m = with_label_branch(false);
    std::fs::write(&src, m.write_to_bytes().unwrap()).unwrap();
    let (code, stdout, err) = ecc(&[
        "train",
        src.to_str().unwrap(),
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("kept for export, not run"), "{err}");
    assert!(stdout.contains("epoch"), "{stdout}");
    let back = ModelProto::parse_from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(outputs(&back), ["label", "class"]);
    let trained = load_bytes(&std::fs::read(&out).unwrap(), &ImportOptions::default()).unwrap();
    let before = load_bytes(&m.write_to_bytes().unwrap(), &ImportOptions::default()).unwrap();
    assert_ne!(trained.params, before.params, "the network trained");
}

/// `ecc run` runs the part it computes; `--save` (the test-case layout, outputs by position)
/// refuses a model whose outputs come from the tail, rather than number the others wrongly.
#[test]
fn run_saves_only_what_it_computes() {
    let dir = common::Scratch::new("tail-run");
    let src = dir.join("labelled.onnx");
    std::fs::write(&src, with_label_branch(true).write_to_bytes().unwrap()).unwrap();
    let (code, out, err) = ecc(&["run", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("output logits"), "{out}");
    let save = dir.join("saved");
    let (code, _, err) = ecc(&[
        "run",
        src.to_str().unwrap(),
        "--save",
        save.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("keeps but does not run"), "{err}");
}

/// The scikit-learn MLP that skl2onnx writes (`scripts/make-skl2onnx-mlp.py`: a Cast on the
/// input, the network, Softmax, then ArgMax / ArrayFeatureExtractor / Reshape / Cast for the
/// label and ZipMap for the probabilities): imports with its six post-processing nodes kept,
/// trains, and the trained export keeps both of skl2onnx's outputs and their nodes.
#[test]
fn the_scikit_learn_mlp_trains_and_keeps_its_label_output() {
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/skl-mlp-digits.onnx"
    );
    let dir = common::Scratch::new("skl");
    let out = dir.join("trained.onnx");
    let (code, stdout, err) = ecc(&[
        "train",
        src,
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--epochs",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "6 nodes after the outputs (ArgMax, ArrayFeatureExtractor, 2 Cast, Reshape, ZipMap)"
        ),
        "{err}"
    );
    // Trained by scikit-learn: ecc says so and starts from it (epoch 0).
    assert!(stdout.contains("the model as given"), "{stdout}");
    let original = ModelProto::parse_from_bytes(&std::fs::read(src).unwrap()).unwrap();
    let back = ModelProto::parse_from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(outputs(&back), ["output_label", "output_probability"]);
    assert_eq!(outputs(&back), outputs(&original));
    for op in ["ArgMax", "ZipMap", "ArrayFeatureExtractor"] {
        assert!(back.graph.node.iter().any(|n| n.op_type == op), "{op}");
    }
    let trained = load_bytes(&std::fs::read(&out).unwrap(), &ImportOptions::default()).unwrap();
    let before = load_bytes(&std::fs::read(src).unwrap(), &ImportOptions::default()).unwrap();
    assert_ne!(trained.params, before.params, "the network trained");
}
