//! `ecc experiment`: every run writes its metrics, finished runs are skipped, a run cut
//! short resumes from its checkpoint and ends as an uninterrupted one would.

mod common;

use common::ecc;
use std::path::{Path, PathBuf};

/// A fresh scratch folder holding the experiment description `json` as `<tag>.json`; returns
/// (folder, description, results folder).
fn setup(tag: &str, json: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ecc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{tag}.json"));
    std::fs::write(&file, json).unwrap();
    let out = dir.join("results");
    (dir, file, out)
}

/// [`setup`] of an experiment `tag`: SGD and EC-SGD on a small MLP on digits, seed 0, for
/// `epochs` epochs.
fn sgd_and_ec_sgd(tag: &str, epochs: usize) -> (PathBuf, PathBuf, PathBuf) {
    let json = format!(
        r#"{{"name": "{tag}", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd", "ec-sgd"],
            "seeds": [0], "epochs": {epochs}, "batch": 32, "lr": 0.05}}"#
    );
    setup(tag, &json)
}

/// `ecc experiment FILE --out OUT EXTRA...`.
fn exp(file: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "experiment",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ecc(&args)
}

#[test]
fn runs_are_written_skipped_and_resumed() {
    let (dir, file, out) = setup(
        "tiny",
        r#"{"name": "tiny", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd", "ec-sgd"],
            "seeds": [0, 1], "epochs": 3, "batch": 32, "lr": 0.05, "momentum": 0.9}"#,
    );
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("4 runs complete (4 trained now)"), "{text}");
    let run = out.join("tiny/ec-sgd-seed1.jsonl");
    let full = std::fs::read_to_string(&run).unwrap();
    assert_eq!(full.lines().count(), 3);
    // Again: nothing to do.
    let (_, text, _) = exp(&file, &out, &[]);
    assert!(text.contains("4 runs complete (0 trained now)"), "{text}");
    // Cut one run back to its first epoch, as an interruption after epoch 1 would leave it:
    // redo that run for 1 epoch only (metrics and checkpoint of epoch 1).
    std::fs::remove_file(&run).unwrap();
    std::fs::remove_file(out.join("tiny/ec-sgd-seed1.safetensors")).unwrap();
    let mut one = ecc::experiment::Experiment::load(&file).unwrap();
    one.epochs = 1;
    one.optimizers = vec![ecc::train::OptimizerKind::EcSgd];
    one.seeds = vec![1];
    ecc::experiment::run(&one, &out, None, |_, _| {}).unwrap();
    assert_eq!(std::fs::read_to_string(&run).unwrap().lines().count(), 1);
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("(1 trained now)"), "{text}");
    let resumed = std::fs::read_to_string(&run).unwrap();
    assert_eq!(common::metric_epochs(&run), vec![1, 2, 3]);
    // Same final test loss as the uninterrupted run (identical weights give identical metrics).
    let last = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s.lines().last().unwrap()).unwrap()["test_loss"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(last(&resumed), last(&full));
    // The summary reads the same files.
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("| ec-sgd | 2 | 3 |"), "{table}");
    // Every epoch records the machine and the build that trained it, and the summary counts
    // the machines (one build: no run named as trained by more than one).
    let machine = ecc::exec::cpu::machine();
    assert!(!ecc::BUILD.is_empty());
    assert!(resumed.lines().all(|l| l.contains(&format!(
        "\"machine\":\"{machine}\",\"build\":\"{}\"",
        ecc::BUILD
    ))));
    assert!(
        table.contains(&format!("Epochs trained per machine: {machine}: 12.\n")),
        "{table}"
    );
    // The per-seed gap table pairs the two optimizers' runs.
    assert!(table.contains("| mlp:64-16-10 | sgd | 2 | "), "{table}");
    // Plots: one accuracy and one loss chart, one line per optimizer.
    let plots = dir.join("plots");
    let (code, _, err) = exp(&file, &out, &["--plots", plots.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(plots.join("tiny-test-accuracy.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(plots.join("tiny-test-loss.svg").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sweep over models: one folder and one table row per model, and a results document whose
/// generated blocks are rebuilt from the metrics while the prose around them is kept.
#[test]
fn sweeps_and_results_documents() {
    let (dir, file, out) = setup(
        "sweep",
        r#"{"name": "sweep", "model": ["mlp:64-8-10", "mlp:64-16-10"], "data": "digits",
            "optimizers": ["sgd", "ec-sgd"], "seeds": [0, 1], "epochs": 2, "batch": 32, "lr": 0.05}"#,
    );
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("8 runs complete (8 trained now)"), "{text}");
    assert!(out.join("sweep/mlp-64-8-10/ec-sgd-seed1.jsonl").is_file());
    assert!(out.join("sweep/mlp-64-16-10/sgd-seed0.jsonl").is_file());
    let doc = dir.join("results.md");
    std::fs::write(
        &doc,
        format!(
            "# Results\n\nProse before.\n\n<!-- ecc experiment {} -->\nstale\n<!-- end -->\n\nProse after.\n",
            file.display()
        ),
    )
    .unwrap();
    let (code, _, err) = ecc(&[
        "experiment",
        "--doc",
        doc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(!text.contains("stale"), "{text}");
    assert!(text.starts_with("# Results\n\nProse before.") && text.ends_with("Prose after.\n"));
    assert!(text.contains("| mlp:64-8-10 | ec-sgd | 2 | 2 |"), "{text}");
    assert!(text.contains("| mlp:64-16-10 | sgd | 2 | 2 |"), "{text}");
    assert!(
        text.contains("(plots/sweep-mlp-64-16-10-test-loss.svg)"),
        "{text}"
    );
    assert!(dir
        .join("plots/sweep-mlp-64-8-10-test-accuracy.svg")
        .is_file());
    // Regenerating again gives the same document.
    ecc(&[
        "experiment",
        "--doc",
        doc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&doc).unwrap(), text);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run whose loss becomes non-finite is recorded as diverged (epoch and message), the other
/// runs go on, the experiment succeeds, and the summary counts it apart from the means.
#[test]
fn diverged_runs_are_recorded_not_fatal() {
    let (dir, file, out) = setup(
        "d",
        r#"{"name": "d", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd", "ec-sgd"],
            "seeds": [0], "epochs": 2, "batch": 32, "lr": {"sgd": 1e12, "ec-sgd": 0.05}}"#,
    );
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("sgd seed 0: diverged: the loss became"),
        "{text}"
    );
    assert!(text.contains("2 runs complete (1 trained now)"), "{text}");
    let metrics = std::fs::read_to_string(out.join("d/sgd-seed0.jsonl")).unwrap();
    assert!(metrics.contains(r#""diverged""#), "{metrics}");
    // Not retried: a second call trains nothing.
    let (_, text, _) = exp(&file, &out, &[]);
    assert!(text.contains("(0 trained now)"), "{text}");
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("| sgd | 0 | 0 | - | - | - | diverged |"),
        "{table}"
    );
    assert!(table.contains("| 1: seed 0 (epoch 1) |"), "{table}");
    assert!(table.contains("| ec-sgd | 1 | 2 |"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Descriptions that cannot work are refused before any run (exit 2, one line): a name that
/// would write outside --out, empty optimizer or seed lists, zero epochs (issue 14).
#[test]
fn bad_descriptions_are_refused_before_any_run() {
    for (tag, json, says) in [
        (
            "escape",
            r#"{"name": "../../x", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd"], "seeds": [0], "epochs": 1, "batch": 32, "lr": 0.05}"#,
            "experiment name '../../x'",
        ),
        (
            "noseeds",
            r#"{"name": "noseeds", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd"], "seeds": [], "epochs": 1, "batch": 32, "lr": 0.05}"#,
            "at least one entry",
        ),
        (
            "noepochs",
            r#"{"name": "noepochs", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd"], "seeds": [0], "epochs": 0, "batch": 32, "lr": 0.05}"#,
            "--epochs must be at least 1",
        ),
    ] {
        let (dir, file, out) = setup(tag, json);
        let (code, text, err) = exp(&file, &out, &[]);
        assert_eq!(code, 2, "{tag}: {text} {err}");
        assert!(err.contains(says), "{tag}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{tag}: {err}");
        assert!(!out.exists(), "{tag}: wrote {}", out.display());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Ctrl-C stops `ecc experiment` as it stops `ecc train` (issue 14; before, SIGINT killed
/// it with no message and the partial epoch was lost): the running step finishes, the
/// checkpoint is written, the process says where it stopped and exits with 130; the same
/// command then resumes the run and every epoch appears once in the metrics.
#[test]
fn ctrl_c_stops_an_experiment_with_its_checkpoint_and_the_rerun_resumes() {
    use std::io::BufRead;
    let (dir, file, out) = setup(
        "sigint",
        r#"{"name": "sigint", "model": "mlp:64-32-10", "data": "digits", "optimizers": ["sgd"],
            "seeds": [0], "epochs": 300, "batch": 8, "lr": 0.01, "momentum": 0.9}"#,
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ecc"))
        .args(["experiment", file.to_str().unwrap(), "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The first epoch line: training is under way.
    assert!(lines.any(|l| l.unwrap().contains("test loss")));
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped after step"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.join("sigint/sgd-seed0.safetensors").is_file());
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("1 runs complete (1 trained now)"), "{text}");
    let epochs = common::metric_epochs(&out.join("sigint/sgd-seed0.jsonl"));
    assert_eq!(epochs, (1..=300).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the reference's heuristic beside EC-SGD and both baselines, the gap table pairs each
/// method with each baseline (and gsgd-ref with ec-sgd) by seed: each gap is the difference
/// of the two runs' final test accuracies in their metrics files.
#[test]
fn gap_tables_pair_every_method_with_every_baseline() {
    let (dir, file, out) = setup(
        "gaps",
        r#"{"name": "gaps", "model": "cnn:1x8x8-c4-b-c4-b-c4-b-10", "bias": false, "data": "digits",
            "optimizers": ["sgd", "ec-sgd", "sgd-ec-init", "gsgd-ref"], "seeds": [0, 1],
            "epochs": 1, "batch": 32, "lr": 0.1}"#,
    );
    let (code, _, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    let acc = |o: &str, seed: u64| {
        let text = std::fs::read_to_string(out.join(format!("gaps/{o}-seed{seed}.jsonl"))).unwrap();
        serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap()
            ["test_accuracy"]
            .as_f64()
            .unwrap()
    };
    for (method, base) in [
        ("ec-sgd", "sgd"),
        ("ec-sgd", "sgd-ec-init"),
        ("gsgd-ref", "sgd"),
        ("gsgd-ref", "sgd-ec-init"),
        ("gsgd-ref", "ec-sgd"),
    ] {
        let gaps: Vec<f64> = (0..2).map(|s| acc(method, s) - acc(base, s)).collect();
        let m = (gaps[0] + gaps[1]) / 2.0;
        let sd = (gaps[0] - gaps[1]).abs() / 2f64.sqrt();
        let row =
            format!("| cnn:1x8x8-c4-b-c4-b-c4-b-10 | {method} | {base} | 2 | {m:.4} ± {sd:.4} |");
        assert!(table.contains(&row), "{row}\n{table}");
        // The last column: the paired t, mean over standard error (sd / sqrt 2).
        let line = table.lines().find(|l| l.starts_with(&row)).unwrap();
        let t = line.trim_end_matches(" |").rsplit("| ").next().unwrap();
        let want = if sd > 0.0 {
            format!("{:.2}", m / (sd / 2f64.sqrt()))
        } else {
            "-".to_string()
        };
        assert_eq!(t, want, "{line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An experiment under way: the summary says which runs finished, which are part-way and
/// how many have not started, and its rows hold the finished runs only; a results document
/// marks a description with no run yet instead of failing.
#[test]
fn experiments_under_way_are_reported_as_such() {
    let (dir, file, out) = setup(
        "partial",
        r#"{"name": "partial", "model": "mlp:64-16-10", "data": "digits", "optimizers": ["sgd", "ec-sgd"],
            "seeds": [0, 1], "epochs": 2, "batch": 32, "lr": 0.05}"#,
    );
    let doc = dir.join("results.md");
    std::fs::write(
        &doc,
        format!("<!-- ecc experiment {} -->\n<!-- end -->\n", file.display()),
    )
    .unwrap();
    let args = [
        "experiment",
        "--doc",
        doc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, _, err) = ecc(&args);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&doc)
        .unwrap()
        .contains("Not started: 4 runs."));
    // Seed 0 of both optimizers, then seed 1 of SGD for one epoch of two.
    let mut part = ecc::experiment::Experiment::load(&file).unwrap();
    part.seeds = vec![0];
    ecc::experiment::run(&part, &out, None, |_, _| {}).unwrap();
    part.seeds = vec![1];
    part.epochs = 1;
    part.optimizers = vec![ecc::train::OptimizerKind::Sgd];
    ecc::experiment::run(&part, &out, None, |_, _| {}).unwrap();
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains(
            "Under way: 2 of 4 runs finished; part-way: sgd seed 1 (1 of 2 epochs); not started: 1."
        ),
        "{table}"
    );
    // The rows: the finished runs (one seed each), not the part-way one.
    assert!(table.contains("| sgd | 1 | 2 |"), "{table}");
    assert!(table.contains("| ec-sgd | 1 | 2 |"), "{table}");
    // Seed by seed, the part-way run says where it is.
    let sgd_row = table.lines().find(|l| l.starts_with("| sgd |")).unwrap();
    assert_eq!(sgd_row.matches("(epoch 1)").count(), 1, "{sgd_row}");
    let (code, _, err) = ecc(&args);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&doc)
        .unwrap()
        .contains("Under way: 2 of 4"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two processes on one description share its runs: a run whose lock another process holds
/// is skipped (and said so), the others train; once the lock is free the next call trains it.
#[test]
fn a_run_locked_by_another_process_is_left_to_it() {
    let (dir, file, out) = sgd_and_ec_sgd("locked", 1);
    std::fs::create_dir_all(out.join("locked")).unwrap();
    // flock locks belong to an open file: this handle conflicts with the child's own.
    let held = std::fs::File::create(out.join("locked/sgd-seed0.lock")).unwrap();
    held.lock().unwrap();
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("mlp:64-16-10 sgd seed 0: skipped, another process is training it"),
        "{text}"
    );
    assert!(
        text.contains("1 runs complete (1 trained now; 1 left to other processes)"),
        "{text}"
    );
    assert!(!out.join("locked/sgd-seed0.jsonl").exists());
    assert!(out.join("locked/ec-sgd-seed0.jsonl").is_file());
    drop(held);
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("2 runs complete (1 trained now)"), "{text}");
    assert_eq!(
        common::metric_epochs(&out.join("locked/sgd-seed0.jsonl")),
        vec![1]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A metrics line as `ecc train` writes it (loss 1.0, 1 s), `extra` fields appended.
fn metrics_line(optimizer: &str, epoch: usize, acc: f64, extra: &str) -> String {
    format!(
        "{{\"optimizer\":\"{optimizer}\",\"epoch\":{epoch},\"lr\":0.05,\"train_loss\":1.0,\
         \"test_loss\":1.0,\"test_accuracy\":{acc},\"seconds\":1.0,\"guarded_steps\":0{extra}}}\n"
    )
}

/// The jitter column: the standard deviation of a run's test accuracy over its last 10
/// epochs, or over its last half when it has fewer than 20, averaged over runs; "-" for runs
/// of fewer than 4 epochs. Metrics written by hand, so the expected values are exact.
#[test]
fn jitter_is_taken_over_the_end_of_a_run_only() {
    let (dir, file, out) = sgd_and_ec_sgd("jitter", 5);
    let write = |optimizer: &str, accs: &[f64]| {
        let lines: String = accs
            .iter()
            .enumerate()
            .map(|(i, &a)| metrics_line(optimizer, i + 1, a, ""))
            .collect();
        std::fs::create_dir_all(out.join("jitter")).unwrap();
        std::fs::write(out.join(format!("jitter/{optimizer}-seed0.jsonl")), lines).unwrap();
    };
    // 5 epochs: the last 2 count (sd of 0.90, 0.92 is 0.0141), not the early ones.
    write("sgd", &[0.1, 0.5, 0.8, 0.90, 0.92]);
    // Part-way at 3 epochs: too short for a jitter.
    write("ec-sgd", &[0.1, 0.5, 0.8]);
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    let row = |o: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {o} |")))
            .unwrap()
            .to_string()
    };
    assert!(row("sgd").contains("| 0.9200 | 0.0141 |"), "{table}");
    assert!(row("ec-sgd").contains("(epoch 3) | - |"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The summary says which machines trained the epochs (the rows written before the field
/// existed count as "not recorded") and names a run that was resumed on another machine.
#[test]
fn the_summary_names_the_machines_that_trained_the_runs() {
    let (dir, file, out) = sgd_and_ec_sgd("machines", 2);
    let write = |optimizer: &str, machines: &[Option<&str>]| {
        let lines: String = machines
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = m.map_or(String::new(), |m| format!(",\"machine\":\"{m}\""));
                metrics_line(optimizer, i + 1, 0.5, &field)
            })
            .collect();
        std::fs::create_dir_all(out.join("machines")).unwrap();
        std::fs::write(out.join(format!("machines/{optimizer}-seed0.jsonl")), lines).unwrap();
    };
    write("sgd", &[None, None]);
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    assert!(!table.contains("per machine"), "{table}");
    // A run whose older lines do not say is not counted as trained on two machines.
    write("sgd", &[None, Some("CPU A / avx2")]);
    write("ec-sgd", &[Some("CPU A / avx2"), Some("CPU B / avx512")]);
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains(
            "Epochs trained per machine: CPU A / avx2: 2; CPU B / avx512: 1; not recorded: 1. \
             Trained on more than one: ec-sgd seed 0.\n"
        ),
        "{table}"
    );
    // Builds: a run resumed by another build is named with its builds; lines without one
    // are not counted as another build.
    let line = |epoch: usize, build: &str| {
        metrics_line(
            "sgd",
            epoch,
            0.5,
            &format!(",\"machine\":\"CPU A / avx2\"{build}"),
        )
    };
    let lines = [
        line(1, ""),
        line(2, ",\"build\":\"aaaa\""),
        line(3, ",\"build\":\"aaaa\""),
        line(4, ",\"build\":\"bbbb+changes\""),
    ];
    std::fs::write(out.join("machines/sgd-seed0.jsonl"), lines.concat()).unwrap();
    let (code, table, err) = exp(&file, &out, &["--summary"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains(
            "Trained on more than one: ec-sgd seed 0. \
             Trained by more than one build: sgd seed 0 (aaaa, bbbb+changes).\n"
        ),
        "{table}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--only` trains the named optimizers' runs and leaves the others for a later call (the
/// summary says they have not started); a name the description lacks is a usage error.
#[test]
fn only_trains_the_named_optimizers() {
    let (dir, file, out) = sgd_and_ec_sgd("only", 1);
    let (code, _, err) = exp(&file, &out, &["--only", "path-sgd"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--only path-sgd: experiment only has no such optimizer (it has sgd, ec-sgd)"),
        "{err}"
    );
    assert!(!out.join("only").exists());
    let (code, text, err) = exp(&file, &out, &["--only", "ec-sgd"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("1 runs complete (1 trained now)"), "{text}");
    assert!(out.join("only/ec-sgd-seed0.jsonl").is_file());
    assert!(!out.join("only/sgd-seed0.jsonl").exists());
    let (_, table, _) = exp(&file, &out, &["--summary"]);
    assert!(table.contains("not started: 1"), "{table}");
    // Without --only, the rest.
    let (code, text, err) = exp(&file, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("2 runs complete (1 trained now)"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--data` runs a description on another data set without editing it: on CIFAR-10 files
/// (small ones in the real format) the models of `ecc new` take a 3x32x32 input and the runs
/// go to `<name>-cifar10/`, apart from the description's own; `--summary` with the same
/// `--data` reads them. Every committed description of `ecc new` models converts.
#[test]
fn descriptions_run_unchanged_on_another_data_set() {
    let (dir, file, out) = setup(
        "ondata",
        r#"{"name": "ondata", "model": "plain:1x28x28-n1-w4.4.4", "data": "fashion-mnist",
            "optimizers": ["sgd", "ec-sgd"], "seeds": [0], "epochs": 1, "batch": 4, "lr": 0.01,
            "schedule": "step:2:0.1"}"#,
    );
    let cifar = dir.join("cifar");
    common::write_cifar(&cifar);
    let data = format!("cifar10:{}", cifar.display());
    let (code, text, err) = exp(&file, &out, &["--data", &data]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("experiment ondata-cifar10: 2 optimizers")
            && text.contains(&format!("  on {data}: plain:3x32x32-n1-w4.4.4\n")),
        "{text}"
    );
    for o in ["sgd", "ec-sgd"] {
        let m = out.join(format!("ondata-cifar10/{o}-seed0.jsonl"));
        assert_eq!(common::metric_epochs(&m), vec![1], "{o}");
    }
    assert!(!out.join("ondata").exists());
    let (code, table, err) = exp(&file, &out, &["--summary", "--data", &data]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("| ec-sgd | 1 | 1 |"), "{table}");
    // The same kind of data in another folder keeps the name and the models.
    let same = ecc::experiment::Experiment::load(&file)
        .unwrap()
        .on_data("fashion-mnist:/elsewhere")
        .unwrap();
    assert_eq!(same.name, "ondata");
    assert_eq!(same.model.list(), ["plain:1x28x28-n1-w4.4.4"]);
    assert_eq!(same.data, "fashion-mnist:/elsewhere");
    // Unknown data: one line, exit 2, nothing trained.
    let (code, _, err) = exp(&file, &out, &["--data", "imagenet:/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--data 'imagenet:/x': expected digits"),
        "{err}"
    );
    // Every committed description: its `ecc new` models on 3x32x32 (MLPs on 3072 inputs)
    // build, its ONNX models are kept.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut converted = 0;
    for f in std::fs::read_dir(root.join("experiments")).unwrap() {
        let f = f.unwrap().path();
        let e = ecc::experiment::Experiment::load(&f).unwrap();
        let before: Vec<String> = e.model.list().iter().map(|m| m.to_string()).collect();
        let c = e.on_data("cifar10:/x").unwrap();
        assert!(c.name.ends_with("-cifar10"), "{}", f.display());
        for (m, was) in c.model.list().into_iter().zip(&before) {
            if !ecc::zoo::Spec::is_spec(m) {
                assert_eq!(m, was);
                continue;
            }
            let s = ecc::zoo::Spec::parse(m).unwrap();
            let want = if m.starts_with("mlp:") {
                vec![3072]
            } else {
                vec![3, 32, 32]
            };
            assert_eq!(s.input, want, "{m} of {}", f.display());
            assert_eq!(m.split_once('-').unwrap().1, was.split_once('-').unwrap().1);
            ecc::zoo::build(&s, 0, true).unwrap();
            converted += 1;
        }
    }
    assert!(converted >= 10, "{converted}");
    std::fs::remove_dir_all(&dir).unwrap();
}
