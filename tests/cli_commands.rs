//! Commands without a test of their own elsewhere: `ecc eval` against the library's
//! evaluation, and `ecc run --save` / `--inputs` round trips.

mod common;

const MLP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mlp-digits.onnx");

#[test]
fn eval_reports_the_libraries_loss_and_accuracy() {
    let (code, out, err) = common::ecc(&["eval", MLP, "--data", "digits"]);
    assert_eq!(code, 0, "{err}");
    let g = ecc::train::logits_graph(
        &ecc::import::load_file(std::path::Path::new(MLP), &Default::default()).unwrap(),
    );
    let split = ecc::data::digits().unwrap();
    let ex = ecc::exec::Executor::new(&g).unwrap();
    let (loss, acc) = ecc::train::evaluate(&ex, &g, &split.test, 512).unwrap();
    assert_eq!(
        out.trim(),
        format!("digits: 359 test samples, loss {loss:.4}, accuracy {acc:.4}")
    );
    // A data set that is not there: one line, exit 2.
    let (code, _, err) = common::ecc(&["eval", MLP, "--data", "mnist:/nonexistent"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn run_saves_inputs_and_outputs_and_reads_them_back() {
    let dir = std::env::temp_dir().join(format!("ecc-run-io-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (code, first, err) = common::ecc(&["run", MLP, "--batch", "3", "--seed", "4", "--save", d]);
    assert_eq!(code, 0, "{err}");
    for f in ["input_0.pb", "output_0.pb"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // The saved output is what the library computes on the saved input.
    let x = ecc::import::tensor::read_pb(&dir.join("input_0.pb")).unwrap();
    assert_eq!(x.dims, vec![3, 64]);
    let g = ecc::import::load_file(std::path::Path::new(MLP), &Default::default()).unwrap();
    let ex = ecc::exec::Executor::new(&g).unwrap();
    let xt = ecc::exec::constant_tensor(&x, ex.device()).unwrap();
    let y = common::values(&ex.forward(&[xt]).unwrap()[0]);
    let saved = ecc::import::tensor::read_pb(&dir.join("output_0.pb")).unwrap();
    assert_eq!(saved.as_f32(), y);
    // Read back with --inputs: the same lines, input shape and output statistics.
    let (code, again, err) = common::ecc(&["run", MLP, "--inputs", d]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, first);
    // Another seed gives other inputs.
    let (_, other, _) = common::ecc(&["run", MLP, "--batch", "3", "--seed", "5"]);
    assert_ne!(other, first);
    // --batch 0 and a folder without inputs: one line, exit 2.
    let (code, _, err) = common::ecc(&["run", MLP, "--batch", "0"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let (code, _, err) = common::ecc(&["run", MLP, "--inputs", "/nonexistent"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
