//! Bad input: every broken model gives one line on stderr naming the file, the node (name,
//! op type, opset) where there is one, and the problem, with exit code 2.

mod common;

use common::ecc;

use onnx_protobuf::{Message, ModelProto};
use std::path::{Path, PathBuf};

fn digits_model() -> ModelProto {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/mlp-digits.onnx"
    ))
    .unwrap();
    ModelProto::parse_from_bytes(&bytes).unwrap()
}

/// A path in this test's scratch folder: one folder per test thread, removed when the
/// thread (the test) ends.
fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static DIR: common::Scratch =
            common::Scratch::new(&format!("bad-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    }
    DIR.with(|d| d.join(name))
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn write_model(name: &str, m: &ModelProto) -> PathBuf {
    write(name, &m.write_to_bytes().unwrap())
}

/// Runs `inspect` and `run` on the file; both must fail with exit 2 and one line that
/// contains every expected fragment.
fn expect_error(path: &Path, fragments: &[&str]) {
    let p = path.to_str().unwrap();
    for cmd in ["inspect", "run"] {
        let (code, _, err) = ecc(&[cmd, p]);
        assert_eq!(code, 2, "{cmd} {p}: exit {code}, stderr {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line expected, got: {err}"
        );
        assert!(err.contains(p), "the error must name the file: {err}");
        for f in fragments {
            assert!(err.contains(f), "missing '{f}' in: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn truncated_file() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/mlp-digits.onnx"
    ))
    .unwrap();
    let p = write("truncated.onnx", &bytes[..bytes.len() / 2]);
    expect_error(&p, &["not a valid ONNX model"]);
}

#[test]
fn not_onnx_and_empty_and_missing() {
    let p = write("text.onnx", b"this is a text file, not a model\n");
    expect_error(&p, &["not a valid ONNX model"]);
    let p = write("empty.onnx", b"");
    expect_error(&p, &["not a valid ONNX model", "empty"]);
    let missing = scratch("does-not-exist.onnx");
    expect_error(&missing, &["cannot read file"]);
}

#[test]
fn unknown_op_names_node_and_opset() {
    let mut m = digits_model();
    m.graph.as_mut().unwrap().node[1].op_type = "Frobnicate".into();
    let name = m.graph.node[1].name.clone();
    let p = write_model("unknown-op.onnx", &m);
    expect_error(
        &p,
        &[
            &format!("node '{name}' (Frobnicate, opset 13)"),
            "unsupported op 'Frobnicate'",
        ],
    );
}

#[test]
fn missing_initializer() {
    let mut m = digits_model();
    let g = m.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != "fc2.weight");
    let p = write_model("missing-init.onnx", &m);
    expect_error(
        &p,
        &[
            "node 'fc2' (Gemm, opset 13)",
            "input 'fc2.weight' is not produced",
        ],
    );
}

#[test]
fn mismatched_shapes() {
    let mut m = digits_model();
    let g = m.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "fc2.weight")
        .unwrap();
    // 32x32 -> 32x16 with the same byte count halved: dims and data agree, the layer does not.
    w.dims = vec![32, 16];
    w.raw_data.truncate(32 * 16 * 4);
    let p = write_model("mismatch.onnx", &m);
    expect_error(
        &p,
        &[
            "node 'fc2' (Gemm, opset 13)",
            "shape mismatch",
            "inner dimensions",
        ],
    );
}

#[test]
fn zero_sized_and_absurd_dims() {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
    let mut m = digits_model();
    let input = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) =
        &mut input.type_.as_mut().unwrap().value
    {
        t.shape.as_mut().unwrap().dim[1].value = Some(Value::DimValue(0));
    }
    let p = write_model("zero-dim.onnx", &m);
    expect_error(&p, &["input 'input'", "dimension 0"]);

    let mut m = digits_model();
    let g = m.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "fc1.weight")
        .unwrap();
    w.dims = vec![1 << 40, 1 << 20];
    let p = write_model("absurd-dim.onnx", &m);
    expect_error(&p, &["tensor 'fc1.weight'", "absurd size"]);
}

#[test]
fn symbolic_dims_ask_for_input_shape() {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
    let mut m = digits_model();
    let input = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) =
        &mut input.type_.as_mut().unwrap().value
    {
        t.shape.as_mut().unwrap().dim[1].value = Some(Value::DimParam("F".into()));
    }
    let p = write_model("symbolic.onnx", &m);
    expect_error(&p, &["--input-shape input="]);
    let (code, out, err) = ecc(&[
        "run",
        p.to_str().unwrap(),
        "--input-shape",
        "input=1x64",
        "--batch",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[2, 10]"), "{out}");
}

#[test]
fn good_model_runs_and_round_trips_via_cli() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cnn-mnist.onnx");
    let out_path = scratch("cnn-roundtrip.onnx");
    let (code, _, err) = ecc(&["export", model, "-o", out_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (c1, o1, _) = ecc(&["run", model, "--batch", "2", "--seed", "7"]);
    let (c2, o2, _) = ecc(&[
        "run",
        out_path.to_str().unwrap(),
        "--batch",
        "2",
        "--seed",
        "7",
    ]);
    assert_eq!((c1, c2), (0, 0));
    let tail = |s: &str| s.lines().last().unwrap().to_string();
    assert_eq!(tail(&o1), tail(&o2));
    assert!(o1.contains("[2, 10]"), "{o1}");
}

/// A BatchNormalization whose scale has the wrong number of channels, and a ReduceMean over
/// the channel axis: one line naming the node, exit 2.
#[test]
fn batch_norm_with_mismatched_parameters_and_unsupported_reductions() {
    let g = ecc::zoo::build(
        &ecc::zoo::Spec::parse("cnn:1x8x8-c4-b-p-10").unwrap(),
        0,
        true,
    )
    .unwrap();
    let mut m = ModelProto::parse_from_bytes(&ecc::export::to_bytes(&g).unwrap()).unwrap();
    let graph = m.graph.as_mut().unwrap();
    let scale = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == "conv1_bn.weight")
        .unwrap();
    scale.dims = vec![3];
    scale.raw_data.truncate(12);
    let p = write_model("bn-mismatch.onnx", &m);
    expect_error(
        &p,
        &["BatchNormalization", "conv1_bn", "expected 4 channels"],
    );

    let mut m = ModelProto::parse_from_bytes(&ecc::export::to_bytes(&g).unwrap()).unwrap();
    let graph = m.graph.as_mut().unwrap();
    let pool = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "MaxPool")
        .unwrap();
    pool.op_type = "ReduceMean".into();
    pool.attribute.clear();
    let mut axes = onnx_protobuf::AttributeProto::new();
    axes.name = "axes".into();
    axes.type_ = protobuf::EnumOrUnknown::new(onnx_protobuf::attribute_proto::AttributeType::INTS);
    axes.ints = vec![1];
    pool.attribute.push(axes);
    let p = write_model("reducemean-channels.onnx", &m);
    expect_error(&p, &["ReduceMean", "axes [1]", "spatial axes"]);
}

/// A Cast to a 16-bit float at run time (it would round, which ecc does not do): one line
/// naming the node and the type, exit 2. (A Cast to float or double is the identity.)
#[test]
fn run_time_cast_to_a_16_bit_float() {
    for (to, name) in [(10, "float16"), (16, "bfloat16")] {
        let mut m = digits_model();
        let g = m.graph.as_mut().unwrap();
        let x = g.input[0].name.clone();
        for n in g.node.iter_mut() {
            for i in n.input.iter_mut() {
                if *i == x {
                    *i = "x16".into();
                }
            }
        }
        let mut cast = onnx_protobuf::NodeProto::new();
        cast.op_type = "Cast".into();
        cast.name = "to16".into();
        cast.input = vec![x];
        cast.output = vec!["x16".into()];
        let mut a = onnx_protobuf::AttributeProto::new();
        a.name = "to".into();
        a.type_ = protobuf::EnumOrUnknown::new(onnx_protobuf::attribute_proto::AttributeType::INT);
        a.i = to;
        cast.attribute.push(a);
        g.node.insert(0, cast);
        let p = write_model(&format!("cast-{name}.onnx"), &m);
        expect_error(&p, &["to16", "Cast", name, "at run time"]);
    }
}

/// CIFAR-10 batches that are truncated or of the wrong size: one line naming the file, exit 2.
#[test]
fn bad_cifar_batches() {
    let dir = scratch("cifar");
    common::write_cifar(&dir);
    let record = common::cifar_record;
    let model = scratch("cifar-model.onnx");
    let (code, _, err) = ecc(&[
        "new",
        "cnn:3x32x32-c4-b-p-10",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let data = format!("cifar10:{}", dir.display());
    let train = |extra: &[&str]| {
        let mut args = vec!["train", model.to_str().unwrap(), "--data", &data];
        args.extend_from_slice(extra);
        ecc(&args)
    };
    let (code, out, err) = train(&["--epochs", "1", "--optimizer", "sgd", "--batch", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cifar10 (10 train / 1 test)"), "{out}");
    // A ResNet made for 16x16 (global pooling: its layers take any size) refuses 32x32 data
    // with the option that fits it, and trains with it.
    let r16 = scratch("cifar-resnet16.onnx");
    let (code, _, err) = ecc(&["new", "resnet:3x16x16-n1", "-o", r16.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let base = [
        "train",
        r16.to_str().unwrap(),
        "--data",
        &data,
        "--epochs",
        "1",
    ];
    let (code, _, err) = ecc(&[&base[..], &["--optimizer", "sgd"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--input-shape input=1x3x32x32"), "{err}");
    let (code, out, err) = ecc(&[
        &base[..],
        &["--optimizer", "sgd", "--input-shape", "input=1x3x32x32"],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test acc"), "{out}");
    for (name, bytes) in [
        (
            "truncated",
            [record(1), record(2)].concat()[..5000].to_vec(),
        ),
        ("wrong size", vec![0u8; 3072]),
    ] {
        std::fs::write(dir.join("data_batch_3.bin"), &bytes).unwrap();
        let (code, _, err) = train(&["--epochs", "1"]);
        assert_eq!(code, 2, "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(
            err.contains("data_batch_3.bin: invalid data:") && err.contains("3073-byte records"),
            "{name}: {err}"
        );
    }
    // A checkpoint that is not one says so (it said "invalid model" before issue 14).
    let ck = scratch("not-a-checkpoint.safetensors");
    std::fs::write(&ck, b"not a checkpoint").unwrap();
    let ckpt = ck.to_str().unwrap();
    let (code, _, err) = ecc(&[
        "train",
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--checkpoint",
        ckpt,
        "--resume",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not-a-checkpoint.safetensors: invalid checkpoint:"),
        "{err}"
    );
    // A model spec over the importer's size limit: refused, not an abort on allocation.
    let big = scratch("big.onnx");
    let (code, _, err) = ecc(&["new", "mlp:1048576-1048576-10", "-o", big.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("absurd size") && !big.exists(), "{err}");
}

/// `ecc ops` is the importer's own table (Cast, folded at import or an identity between
/// float types, was missing when it was a separate list), plus ReduceMean, which import
/// rewrites.
#[test]
fn ecc_ops_lists_what_the_importer_reads() {
    let (code, out, err) = ecc(&["ops"]);
    assert_eq!(code, 0, "{err}");
    for op in [
        "Cast (constant inputs; to float or double at run time)",
        "Split (read as one Slice per output)",
        "ReduceMean (over the spatial axes)",
        "Gemm",
        "Conv",
    ] {
        assert!(out.lines().any(|l| l == op), "{op} missing:\n{out}");
    }
    assert_eq!(out.lines().count(), ecc::import::op_names().len());
}
