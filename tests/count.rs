//! Spec §9.3: class_dim (m - H) equals the rank of the structure matrix (weights x paths),
//! computed exactly here, independently of the analysis, for MLPs of unequal widths.

use ecc::analysis::{analyze, RuleSet};
use ecc::zoo::{build, Spec};

mod common;
use common::rank;

/// Structure matrix of a layered MLP: one row per weight and bias, one column per path
/// (from an input or a bias to an output), 1 where the path uses the parameter.
fn structure_rank(widths: &[usize], bias: bool) -> (usize, usize) {
    let l = widths.len() - 1;
    // Parameter index: weights W_k[j, i] then biases b_k[j], layer by layer.
    let mut index = std::collections::HashMap::new();
    for k in 1..=l {
        for j in 0..widths[k] {
            for i in 0..widths[k - 1] {
                let n = index.len();
                index.insert((k, j, Some(i)), n);
            }
            if bias {
                let n = index.len();
                index.insert((k, j, None), n);
            }
        }
    }
    let m = index.len();
    let mut paths: Vec<Vec<usize>> = vec![];
    // A path starts at layer `start` (0: an input unit; k >= 1: the bias of a unit of k).
    fn extend(
        widths: &[usize],
        k: usize,
        unit: usize,
        used: Vec<(usize, usize, Option<usize>)>,
        out: &mut Vec<Vec<(usize, usize, Option<usize>)>>,
    ) {
        if k == widths.len() - 1 {
            out.push(used);
            return;
        }
        for j in 0..widths[k + 1] {
            let mut u = used.clone();
            u.push((k + 1, j, Some(unit)));
            extend(widths, k + 1, j, u, out);
        }
    }
    let mut raw = vec![];
    for i in 0..widths[0] {
        extend(widths, 0, i, vec![], &mut raw);
    }
    if bias {
        for k in 1..=l {
            for j in 0..widths[k] {
                extend(widths, k, j, vec![(k, j, None)], &mut raw);
            }
        }
    }
    for p in raw {
        paths.push(p.iter().map(|key| index[key]).collect());
    }
    let mut rows = vec![vec![0i128; paths.len()]; m];
    for (c, p) in paths.iter().enumerate() {
        for &e in p {
            rows[e][c] = 1;
        }
    }
    (m, rank(rows))
}

#[test]
fn class_dim_is_the_rank_of_the_structure_matrix() {
    for (widths, bias) in [
        (vec![3, 4, 2, 4, 2], false),
        (vec![3, 4, 2, 4, 2], true),
        (vec![5, 3, 3, 2], false),
        (vec![5, 3, 3, 2], true),
        (vec![2, 5, 1, 3], true),
    ] {
        let spec = format!(
            "mlp:{}",
            widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("-")
        );
        let g = build(&Spec::parse(&spec).unwrap(), 0, bias).unwrap();
        let a = analyze(&g, &RuleSet::default_rules());
        let (m, r) = structure_rank(&widths, bias);
        println!(
            "{spec} bias={bias}: m = {m}, H = {}, class_dim = {}, rank = {r}",
            a.rescalings(),
            a.class_dim()
        );
        assert_eq!(a.params, m);
        assert_eq!(a.class_dim(), r, "{spec} bias={bias}");
    }
}

#[test]
fn exact_rank_helper_is_right() {
    assert_eq!(rank(vec![vec![1, 1, 0], vec![0, 1, 1], vec![1, 2, 1]]), 2);
    assert_eq!(rank(vec![vec![1, 0], vec![0, 1]]), 2);
    assert_eq!(rank(vec![vec![0, 0], vec![0, 0]]), 0);
}
