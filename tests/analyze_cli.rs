//! `ecc analyze` through the command line: JSON keys, --explain, --rules.

mod common;

use common::ecc;

const CNN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cnn-mnist.onnx");

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ecc-analyze-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn json_has_the_promised_keys() {
    let (code, out, err) = ecc(&["analyze", CNN, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "params",
        "rescalings",
        "class_dim",
        "groups",
        "blocked",
        "scale_invariant",
    ] {
        assert!(v.get(k).is_some(), "missing key {k}");
    }
    let (m, h) = (
        v["params"].as_u64().unwrap(),
        v["rescalings"].as_u64().unwrap(),
    );
    assert_eq!(v["class_dim"].as_u64().unwrap(), m - h);
    assert_eq!(h, 8 + 16 + 32);
    let g0 = &v["groups"][0];
    for k in [
        "count",
        "members",
        "producer_params",
        "consumer_params",
        "path",
        "consumers",
    ] {
        assert!(g0.get(k).is_some(), "group lacks {k}");
    }
    assert_eq!(v["blocked"][0]["op"], "Gemm");
}

#[test]
fn explain_prints_the_rule_chain() {
    let (code, out, err) = ecc(&["analyze", CNN, "--explain", "conv2:3"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "conv-emit",
        "relu",
        "max-pool",
        "flatten",
        "gemm-absorb",
        "rescalable",
    ] {
        assert!(out.contains(want), "missing {want} in:\n{out}");
    }
    let (code, _, err) = ecc(&["analyze", CNN, "--explain", "conv2:99"]);
    assert_eq!(code, 2);
    assert!(err.contains("16 output channels"), "{err}");
}

#[test]
fn user_rules_are_added_and_checked() {
    let dir = scratch("bad");
    std::fs::write(
        dir.join("mine.rules"),
        "# mine\nok-rule: (identity ?x) => ?x\nbroken (relu ?x) => ?x\n",
    )
    .unwrap();
    let (code, _, err) = ecc(&["analyze", CNN, "--rules", dir.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("mine.rules:3:") && err.contains("expected 'NAME"),
        "{err}"
    );

    let dir = scratch("dup");
    std::fs::write(dir.join("dup.rules"), "relu: (relu ?x) => ?x\n").unwrap();
    let (code, _, err) = ecc(&["analyze", CNN, "--rules", dir.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("already used"), "{err}");

    // A (sound) user rule that lets scales through Sigmoid's odd cousin, Tanh, would be
    // unsound; here a harmless one is added and shows up in the count.
    let dir = scratch("good");
    std::fs::write(
        dir.join("extra.rules"),
        "identity-twice: (identity (identity ?x)) => (identity ?x)\n",
    )
    .unwrap();
    let (code, out, err) = ecc(&["analyze", CNN, "--rules", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let n = ecc::analysis::RuleSet::default_rules().rules.len() + 1;
    assert!(out.contains(&format!("{n} rules")), "{out}");

    // An unsound user rule (a scale passing through Sigmoid would make Sigmoid units
    // "rescalable") is refused when loaded, with its file:line and the instance that shows it.
    let dir = scratch("unsound");
    std::fs::write(
        dir.join("bad.rules"),
        "# a comment line\nsigmoid-pass: (sigmoid (scale ?s ?x)) => (scale ?s (sigmoid ?x))\n",
    )
    .unwrap();
    let (code, out, err) = ecc(&["analyze", CNN, "--rules", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("bad.rules:2"), "{err}");
    assert!(err.contains("'sigmoid-pass' is unsound"), "{err}");
    assert!(err.contains("random instance"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for name in ["bad", "dup", "good", "unsound"] {
        std::fs::remove_dir_all(scratch(name)).unwrap();
    }
}
