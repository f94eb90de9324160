//! Rule soundness: every rule in rules/ holds numerically (both sides evaluated on random
//! tensors, scales and parameters, in f64), and known-unsound rules are caught.

use ecc::analysis::check::check_rule;
use ecc::analysis::rules::{parse_rules, RuleSet};

#[test]
fn every_rule_in_rules_dir_is_sound() {
    // Read the files from disk, not the embedded copies, so the test covers what is there.
    let mut set = RuleSet::default();
    set.load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules"
    )))
    .unwrap();
    assert_eq!(
        set.rules.len(),
        RuleSet::default_rules().rules.len(),
        "rules/ and the embedded set differ"
    );
    let mut bad = vec![];
    for r in &set.rules {
        match check_rule(r, 12) {
            Ok(err) if err <= 1e-9 => {
                println!("ok   {:<22} worst relative error {err:.1e}", r.name)
            }
            Ok(err) => bad.push(format!("{} ({}): relative error {err:e}", r.name, r.origin)),
            Err(e) => bad.push(format!("{} ({}): {e}", r.name, r.origin)),
        }
    }
    println!("{} rules checked", set.rules.len());
    assert!(bad.is_empty(), "unsound rules:\n{}", bad.join("\n"));
}

#[test]
fn unsound_rules_are_caught() {
    let wrong = "
sigmoid-pass:    (sigmoid (scale ?s ?x)) => (scale ?s (sigmoid ?x))
add-untied:      (add (scale ?s ?x) ?y) => (scale ?s (add ?x ?y))
gemm-wrong-axis: (gemm (scale ?s ?x) (param ?w) ?b) => (gemm ?x (pscale ?s (param ?w)) ?b)
clip-capped:     (clip (scale ?s ?x) ?lo ?hi) => (scale ?s (clip ?x ?lo ?hi)) if zero(?lo)
bn-no-mean:      (batch-norm (scale ?s ?x) ?g ?b ?m ?v) => (scale ?s (batch-norm ?x ?g (pscale ?s ?b) ?m ?v))
conv-no-bias:    (conv ?g ?x (pscale ?s (param ?w)) ?b) => (scale ?s (conv ?g ?x (param ?w) ?b))
lrn-pass:        (lrn (scale ?s ?x)) => (scale ?s (lrn ?x))
softmax-pass:    (softmax (scale ?s ?x)) => (scale ?s (softmax ?x))
max-untied:      (max (scale ?s ?x) ?y) => (scale ?s (max ?x ?y))
min-untied:      (min ?x (scale ?s ?y)) => (scale ?s (min ?x ?y))
hard-sigmoid:    (hard-sigmoid (scale ?s ?x)) => (scale ?s (hard-sigmoid ?x))
hard-swish:      (hard-swish (scale ?s ?x)) => (scale ?s (hard-swish ?x))
gelu-pass:       (gelu (scale ?s ?x)) => (scale ?s (gelu ?x))
pad-value-pass:  (pad-value (scale ?s ?x)) => (scale ?s (pad-value ?x))
in-pass:         (instance-norm (scale ?s ?x)) => (scale ?s (instance-norm ?x))
in-vanish:       (instance-norm (scale ?s ?x)) => (instance-norm ?x)
convt-as-conv:   (conv-transpose (scale ?s ?x) (param ?w) ?b) => (conv-transpose ?x (pscale ?s (param ?w)) ?b)
convt-no-bias:   (conv-transpose ?x (pscale ?s (param ?w)) ?b) => (scale ?s (conv-transpose ?x (param ?w) ?b))
resize-vanish:   (resize (scale ?s ?x)) => (resize ?x)
mixing:          (channel-mixing-reshape (scale ?s ?x)) => (scale (spread ?s) (channel-mixing-reshape ?x))
";
    for r in parse_rules("wrong.rules", wrong).unwrap() {
        let verdict = check_rule(&r, 12);
        assert!(
            !matches!(verdict, Ok(e) if e <= 1e-9),
            "{} passed the check: {verdict:?}",
            r.name
        );
        println!("caught {:<16} {verdict:?}", r.name);
    }
}
