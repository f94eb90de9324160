//! Conformance on the models of the `onnx` wheel (fetched by scripts/fetch-fixtures.sh):
//! the 9 light model-zoo architectures and the pytorch-converted / pytorch-operator cases
//! with their reference outputs.

mod common;

use candle_core::{Device, Tensor};
use common::{fixtures, rel_err, values};
use ecc::exec::{constant_tensor, Executor};
use ecc::import::{load_file, tensor::read_pb, ImportOptions};

#[test]
fn light_zoo_models_import_and_run() {
    let Some(fx) = fixtures() else { return };
    for name in common::ZOO {
        let dir = fx.join("onnx/light");
        let g = load_file(
            &dir.join(format!("light_{name}.onnx")),
            &ImportOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ex = Executor::new(&g).unwrap();
        let xs = common::random_inputs(&g, 1, 3);
        let y = ex.forward(&xs).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The zoo's reference output was computed with the same constant weights: 0.5
        // everywhere, and a final Softmax, so it is 1/1000 for any input. This checks import,
        // shapes and that the run ends; the arithmetic of these models is checked against
        // onnxruntime with random weights (tests/ort.rs).
        let want = read_pb(&dir.join(format!("light_{name}_output_0.pb"))).unwrap();
        let dims = y[0].dims().to_vec();
        println!("{name}: output {dims:?}, {} params", g.param_count());
        assert_eq!(dims, want.dims, "{name}");
        assert_eq!(
            (dims[0], dims[1], dims.iter().product::<usize>()),
            (1, 1000, 1000),
            "{name}"
        );
        let err = rel_err(&values(&y[0]), &want.as_f32());
        assert!(err <= 1e-4, "{name}: relative error {err}");
    }
}

/// Runs every case of a pytorch-* folder; returns (ran, passed, skipped with reasons).
fn run_cases(dir: &std::path::Path) -> (usize, Vec<String>, Vec<String>, Vec<String>) {
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let (mut ran, mut passed, mut failed, mut skipped) = (0, vec![], vec![], vec![]);
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let g = match load_file(&case.join("model.onnx"), &ImportOptions::default()) {
            Ok(g) => g,
            Err(e) if e.is_unsupported() => {
                skipped.push(format!("{name}: {}", e.kind));
                continue;
            }
            Err(e) => {
                ran += 1;
                failed.push(format!("{name}: import: {e}"));
                continue;
            }
        };
        let data = case.join("test_data_set_0");
        let ex = Executor::new(&g).unwrap();
        // Inputs ecc refuses (float64 values outside float32's range) put a case out of scope.
        let xs: Result<Vec<Tensor>, _> = (0..ex.input_names().len())
            .map(|k| read_pb(&data.join(format!("input_{k}.pb"))))
            .map(|c| c.map(|c| constant_tensor(&c, &Device::Cpu).unwrap()))
            .collect();
        let xs = match xs {
            Ok(xs) => xs,
            Err(e) if e.is_unsupported() => {
                skipped.push(format!("{name}: input: {}", e.kind));
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        ran += 1;
        match ex.forward(&xs) {
            Err(e) => failed.push(format!("{name}: run: {e}")),
            Ok(ys) => {
                let mut worst = 0f64;
                for (k, y) in ys.iter().enumerate() {
                    let want = read_pb(&data.join(format!("output_{k}.pb"))).unwrap();
                    let got = values(y);
                    worst = worst.max(if got.len() == want.len() {
                        rel_err(&got, &want.as_f32())
                    } else {
                        f64::INFINITY
                    });
                }
                // Round trip: exported bytes import again and compute the same outputs.
                let again = ecc::import::load_bytes(
                    &ecc::export::to_bytes(&g).unwrap(),
                    &ImportOptions::default(),
                )
                .and_then(|g2| Executor::new(&g2)?.forward(&xs));
                let same = match again {
                    Ok(zs) => zs.iter().zip(&ys).all(|(z, y)| values(z) == values(y)),
                    Err(_) => false,
                };
                if !same {
                    failed.push(format!(
                        "{name}: the exported model computes something else"
                    ));
                } else if worst <= 1e-4 {
                    passed.push(name);
                } else {
                    failed.push(format!("{name}: relative error {worst:e}"));
                }
            }
        }
    }
    (ran, passed, failed, skipped)
}

#[test]
fn pytorch_cases_match_reference_outputs() {
    let Some(fx) = fixtures() else { return };
    let (mut ran, mut passed, mut failed, mut skipped) = (0, 0, vec![], vec![]);
    for folder in ["pytorch-converted", "pytorch-operator"] {
        let (r, p, f, s) = run_cases(&fx.join("onnx").join(folder));
        println!(
            "{folder}: ran {r}, passed {}, failed {}, skipped {}",
            p.len(),
            f.len(),
            s.len()
        );
        ran += r;
        passed += p.len();
        failed.extend(f);
        skipped.extend(s);
    }
    for s in &skipped {
        println!("  skipped {s}");
    }
    for f in &failed {
        println!("  FAILED  {f}");
    }
    println!(
        "in scope: ran {ran}, passed {passed}, failed {}; skipped {}",
        failed.len(),
        skipped.len()
    );
    // The README's numbers, pinned: a case that starts or stops importing, or passing,
    // changes them (and the README with them).
    assert_eq!(
        (ran, passed, skipped.len()),
        (90, 90, 27),
        "in scope, passed, skipped (README: 90 of the 117 in scope, 90 pass)"
    );
}
