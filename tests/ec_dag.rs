//! The EC pass beyond chains (spec §11, §12): BatchNormalization in training mode, residual
//! streams (tied units), fan-out and concatenation, through star blocks. Spec §9 on them:
//! 9.1 invariance (and the radial directions of §11.1), 9.2 gradient balance, 9.3 the count
//! against the exact rank of the structure matrix with paths cut at training-mode BNs, 9.4
//! coordinates of a rescaled copy, 9.5 ICR against finite differences, 9.6 weight
//! allocation, all in f64 through the executor in training mode.

mod common;

use candle_core::{DType, Device, Tensor};
use common::mlp64::f64s;
use common::rank;
use common::train_loss::{inputs, Loss};
use ecc::analysis::{analyze_in, Analysis, BnMode, RuleSet};
use ecc::ec::step::{EcState, EcStep, StepConfig, Tensors};
use ecc::ec::{convert_with, Conversion};
use ecc::exec::Executor;
use ecc::ir::{BinaryKind, Constant, DimDecl, Graph, ModelMeta, Node, Op, ValueInfo};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

fn training(g: &Graph) -> Analysis {
    analyze_in(g, &RuleSet::default_rules(), BnMode::Training)
}

/// x(6) -> fc0 -> BN0 -> relu = s;  s -> fc_a -> BNa -> relu = a;  s -> fc_b -> BNb -> relu
/// = b;  t = relu(concat(a, b) + s);  t -> fc_out(3). Every fc has a bias (those before a BN
/// are redundant); the stream s is tied to the concatenation of a and b (fan-out of s to
/// fc_a, fc_b and the sum; a concatenation inside a tie).
fn bn_dag(seed: u64) -> Graph {
    dag_model(seed, true)
}

/// The same DAG with or without its BNs (without: a residual stream tied to a
/// concatenation, with fan-out, and no BN to cut the paths).
fn dag_model(seed: u64, with_bn: bool) -> Graph {
    dag_model_sized(seed, with_bn, 6, 3)
}

fn dag_model_sized(seed: u64, with_bn: bool, inputs: usize, classes: usize) -> Graph {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut params = BTreeMap::new();
    let mut u = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(lo..hi)).collect()
    };
    let mut nodes = vec![];
    let fc = |params: &mut BTreeMap<String, Constant>,
              nodes: &mut Vec<Node>,
              u: &mut dyn FnMut(usize, f32, f32) -> Vec<f32>,
              name: &str,
              x: &str,
              o: usize,
              i: usize| {
        params.insert(
            format!("{name}.w"),
            Constant::f32(vec![o, i], u(o * i, -1.0, 1.0)),
        );
        params.insert(format!("{name}.b"), Constant::f32(vec![o], u(o, -0.5, 0.5)));
        nodes.push(Node {
            name: name.into(),
            op: Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            inputs: vec![x.into(), format!("{name}.w"), format!("{name}.b")],
            outputs: vec![format!("{name}_out")],
        });
    };
    let bn = |params: &mut BTreeMap<String, Constant>,
              nodes: &mut Vec<Node>,
              u: &mut dyn FnMut(usize, f32, f32) -> Vec<f32>,
              name: &str,
              x: &str,
              c: usize| {
        params.insert(format!("{name}.g"), Constant::f32(vec![c], u(c, 0.5, 1.5)));
        params.insert(
            format!("{name}.beta"),
            Constant::f32(vec![c], u(c, -0.5, 0.5)),
        );
        params.insert(format!("{name}.mean"), Constant::f32(vec![c], vec![0.0; c]));
        params.insert(format!("{name}.var"), Constant::f32(vec![c], vec![1.0; c]));
        nodes.push(Node {
            name: name.into(),
            op: Op::BatchNorm {
                epsilon: 1e-5,
                momentum: 0.9,
            },
            inputs: ["", ".g", ".beta", ".mean", ".var"]
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    if k == 0 {
                        x.to_string()
                    } else {
                        format!("{name}{s}")
                    }
                })
                .collect(),
            outputs: vec![format!("{name}_out")],
        });
    };
    let relu = |nodes: &mut Vec<Node>, name: &str, x: &str| {
        nodes.push(Node {
            name: name.into(),
            op: Op::Relu,
            inputs: vec![x.into()],
            outputs: vec![format!("{name}_out")],
        })
    };
    let bn_or_not = |params: &mut BTreeMap<String, Constant>,
                     nodes: &mut Vec<Node>,
                     u: &mut dyn FnMut(usize, f32, f32) -> Vec<f32>,
                     name: &str,
                     x: &str,
                     c: usize|
     -> String {
        if with_bn {
            bn(params, nodes, u, name, x, c);
            format!("{name}_out")
        } else {
            x.to_string()
        }
    };
    fc(&mut params, &mut nodes, &mut u, "fc0", "x", 8, inputs);
    let y = bn_or_not(&mut params, &mut nodes, &mut u, "bn0", "fc0_out", 8);
    relu(&mut nodes, "s", &y);
    fc(&mut params, &mut nodes, &mut u, "fc_a", "s_out", 5, 8);
    let y = bn_or_not(&mut params, &mut nodes, &mut u, "bna", "fc_a_out", 5);
    relu(&mut nodes, "a", &y);
    fc(&mut params, &mut nodes, &mut u, "fc_b", "s_out", 3, 8);
    let y = bn_or_not(&mut params, &mut nodes, &mut u, "bnb", "fc_b_out", 3);
    relu(&mut nodes, "b", &y);
    nodes.push(Node {
        name: "cat".into(),
        op: Op::Concat { axis: 1 },
        inputs: vec!["a_out".into(), "b_out".into()],
        outputs: vec!["cat_out".into()],
    });
    nodes.push(Node {
        name: "add".into(),
        op: Op::Binary {
            kind: BinaryKind::Add,
            legacy_axis: None,
        },
        inputs: vec!["cat_out".into(), "s_out".into()],
        outputs: vec!["add_out".into()],
    });
    relu(&mut nodes, "t", "add_out");
    fc(
        &mut params,
        &mut nodes,
        &mut u,
        "fc_out",
        "t_out",
        classes,
        8,
    );
    let n = DimDecl::Param("N".into());
    let g = Graph {
        meta: ModelMeta {
            ir_version: 8,
            opsets: vec![(String::new(), 13)],
            ..Default::default()
        },
        inputs: vec![ValueInfo {
            name: "x".into(),
            declared: vec![n.clone(), DimDecl::Value(inputs as i64)],
            elem_type: 1,
        }],
        outputs: vec![ValueInfo {
            name: "fc_out_out".into(),
            declared: vec![n, DimDecl::Value(classes as i64)],
            elem_type: 1,
        }],
        nodes,
        params,
        ..Default::default()
    };
    ecc::import::load_bytes(&ecc::export::to_bytes(&g).unwrap(), &Default::default()).unwrap()
}

/// Small BN networks: the DAG above, a ResNet and a PlainNet (BN after every conv, the
/// ResNet with projection shortcuts), a BN CNN with max pooling and a flatten.
fn bn_models() -> Vec<(String, Graph)> {
    let mut v = vec![("bn-dag".to_string(), bn_dag(1))];
    for spec in [
        "resnet:2x6x6-n1-w3.4.4",
        "plain:2x6x6-n1-w3.4.4",
        "cnn:1x6x6-c3-b-p-c4-b-5",
    ] {
        let g = ecc::zoo::build(&ecc::zoo::Spec::parse(spec).unwrap(), 2, true).unwrap();
        v.push((spec.to_string(), g));
    }
    v
}

/// Small networks without BN whose rescalings form a DAG (DAG blocks): the DAG above
/// without its BNs, and PyTorch's export of a residual CNN with BN folded into the convs
/// (tests/fixtures/bn-resnet/model-eval.onnx: two tied streams, a projection, ReduceMean).
fn dag_models() -> Vec<(String, Graph)> {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bn-resnet/model-eval.onnx");
    vec![
        ("dag".to_string(), dag_model(1, false)),
        (
            "pytorch resnet, BN folded".to_string(),
            ecc::import::load_file(&fixture, &Default::default()).unwrap(),
        ),
    ]
}

fn models() -> Vec<(String, Graph)> {
    bn_models().into_iter().chain(dag_models()).collect()
}

fn conversion(g: &Graph) -> Conversion {
    let c = convert_with(g, training(g));
    assert_eq!(c.stats.degenerate, 0);
    c
}

#[test]
fn every_rescaling_is_in_a_star_or_dag_block() {
    for (name, g) in models() {
        let c = conversion(&g);
        let r = c.report(&name, &g);
        println!(
            "{name}: H {}, radial {}, redundant biases {}, {} blocks, unit coverage {:.3}, coverage {:.3}",
            r.rescalings,
            r.radial,
            r.redundant_biases,
            r.blocks.len(),
            r.unit_coverage,
            r.coverage
        );
        assert_eq!(r.unit_coverage, 1.0, "{name}\n{}", r.summary());
        let bn = r.radial > 0;
        let kind = if bn { "star" } else { "dag" };
        assert!(r.blocks.iter().all(|b| b.kind == kind), "{name}: {kind}");
    }
    // The DAG: channel c of the stream s is tied to channel c of concat(a, b), a unit of
    // bna or of bnb; the redundant biases are those of fc0, fc_a and fc_b.
    let g = bn_dag(1);
    let a = training(&g);
    assert_eq!(a.rescalings(), 8);
    assert_eq!(a.radial.len(), 8 + 5 + 3);
    assert_eq!(a.redundant_biases, 8 + 5 + 3);
    let producers =
        |m: &[usize]| -> Vec<String> { m.iter().map(|&u| g.node_label(a.producer(u))).collect() };
    for (k, m) in a.groups.iter().enumerate() {
        let other = if k < 5 { "bna" } else { "bnb" };
        assert_eq!(producers(m), ["bn0", other], "group {k}");
    }
}

/// Spec §9.3 with paths cut at training-mode BNs: a path starts at an input, a bias or a
/// BN's (gamma, beta) and ends at a BN's input or an output. m - H is the exact rank of
/// the structure matrix, and the class dimension is that rank minus the radial directions
/// and the redundant biases (spec §11).
#[test]
fn class_dimension_is_the_rank_of_the_cut_structure_matrix() {
    for with_bn in [true, false] {
        rank_check(&dag_model(1, with_bn));
    }
}

fn rank_check(g: &Graph) {
    let g = g.clone();
    let a = training(&g);
    // Partial paths (lists of (param, flat index)) ending at each feature of each tensor.
    type Path = Vec<(String, usize)>;
    let mut at: HashMap<String, Vec<Vec<Path>>> = HashMap::new();
    at.insert("x".into(), (0..6).map(|_| vec![vec![]]).collect());
    let mut done: Vec<Path> = vec![];
    for n in &g.nodes {
        let ins = n.data_inputs();
        let out: Vec<Vec<Path>> = match &n.op {
            Op::Gemm { .. } => {
                let x = &at[&ins[0]];
                let o = g.params[&ins[1]].dims[0];
                (0..o)
                    .map(|j| {
                        let mut ps: Vec<Path> = vec![vec![(ins[2].clone(), j)]];
                        for (i, xs) in x.iter().enumerate() {
                            for p in xs {
                                let mut q = p.clone();
                                q.push((ins[1].clone(), j * x.len() + i));
                                ps.push(q);
                            }
                        }
                        ps
                    })
                    .collect()
            }
            Op::BatchNorm { .. } => {
                done.extend(at[&ins[0]].iter().flatten().cloned());
                (0..g.params[&ins[1]].len())
                    .map(|j| vec![vec![(ins[1].clone(), j)], vec![(ins[2].clone(), j)]])
                    .collect()
            }
            Op::Relu => at[&ins[0]].clone(),
            Op::Concat { .. } => ins.iter().flat_map(|i| at[i].clone()).collect(),
            Op::Binary { .. } => at[&ins[0]]
                .iter()
                .zip(&at[&ins[1]])
                .map(|(p, q)| p.iter().chain(q).cloned().collect())
                .collect(),
            op => panic!("unexpected {op:?}"),
        };
        at.insert(n.outputs[0].clone(), out);
    }
    done.extend(at[&g.outputs[0].name].iter().flatten().cloned());
    // Rows: every trainable scalar.
    let stats = g.bn_statistics();
    let mut row: HashMap<(String, usize), usize> = HashMap::new();
    for (k, p) in &g.params {
        if !stats.contains(k) {
            for i in 0..p.len() {
                let r = row.len();
                row.insert((k.clone(), i), r);
            }
        }
    }
    let m = row.len();
    assert_eq!(m, a.params);
    let mut rows = vec![vec![0i128; done.len()]; m];
    for (c, p) in done.iter().enumerate() {
        for s in p {
            rows[row[s]][c] += 1;
        }
    }
    let r = rank(rows);
    println!(
        "m {m}, {} paths, rank {r}, H {}, radial {}, redundant biases {}, class dim {}",
        done.len(),
        a.rescalings(),
        a.radial.len(),
        a.redundant_biases,
        a.class_dim()
    );
    assert_eq!(r, m - a.rescalings());
    assert_eq!(a.class_dim(), r - a.radial.len() - a.redundant_biases);
}

/// Spec §9.1 and §11.1: a random rescaling of every rescaling group leaves the
/// training-mode outputs unchanged; so does a random rescaling of every radial direction
/// (exactly with BN's eps at 0, to eps level with it); the redundant biases have zero
/// gradient.
#[test]
fn rescalings_and_radial_directions_leave_the_training_function() {
    for (name, g) in models() {
        let a = training(&g);
        let xs = inputs(&g, DType::F32);
        let y = |g: &Graph| {
            let ex = Executor::new(g).unwrap();
            common::values(&ex.forward_train(&xs, 0).unwrap()[0])
        };
        let y0 = y(&g);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut moved = g.clone();
        let f: Vec<f32> = (0..a.rescalings())
            .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
            .collect();
        a.rescale(&mut moved, |k| f[k]);
        let e1 = common::rel_err(&y(&moved), &y0);
        let f: Vec<f32> = (0..a.radial.len())
            .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
            .collect();
        let mut radial = g.clone();
        a.rescale_radial(&mut radial, |k| f[k]);
        let with_eps = common::rel_err(&y(&radial), &y0);
        let no_eps = |g: &Graph| {
            let mut g = g.clone();
            for n in &mut g.nodes {
                if let Op::BatchNorm { epsilon, .. } = &mut n.op {
                    *epsilon = 0.0;
                }
            }
            g
        };
        let e2 = common::rel_err(&y(&no_eps(&radial)), &y(&no_eps(&g)));
        println!(
            "{name}: rescaled {e1:.1e}; radial directions rescaled {e2:.1e} (eps 0), {with_eps:.1e} (eps 1e-5)"
        );
        assert!(e1 <= 1e-5, "{name}: {e1:e}");
        assert!(e2 <= 1e-5, "{name}: {e2:e}");
        assert!(with_eps <= 1e-2, "{name}: {with_eps:e}");
        assert_eq!(a.radial.is_empty(), radial.params == g.params, "{name}");
    }
    let g = bn_dag(1);
    let grads = Loss::new(&g).grads(&f64s(&g));
    for b in ["fc0.b", "fc_a.b", "fc_b.b"] {
        let worst = grads[b].iter().fold(0f64, |m, x| m.max(x.abs()));
        let scale = grads["fc0.w"].iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(worst <= 1e-9 * scale.max(1.0), "{b}: gradient {worst:e}");
    }
}

/// Spec §9.2: the largest relative difference, over the rescaling groups, between Σ w·g over
/// the slices a group multiplies and over those it divides.
fn imbalance(a: &Analysis, g: &Graph, w: &Tensors, grads: &Tensors) -> f64 {
    let mut worst = 0f64;
    for members in &a.groups {
        let (mut inc, mut out) = (0f64, 0f64);
        for &u in members {
            for e in a.edits(u) {
                let s: f64 = ecc::analysis::edit_runs(&g.params[&e.param].dims, e)
                    .into_iter()
                    .flatten()
                    .map(|i| w[&e.param][i] * grads[&e.param][i])
                    .sum();
                if e.exponent > 0 {
                    inc += s
                } else {
                    out += s
                }
            }
        }
        worst = worst.max(common::rel_diff(inc, out, 1e-12));
    }
    worst
}

/// Spec §9.2 in training mode: for every rescaling (tied groups included), the sum of w·g
/// over the slices it multiplies equals the sum over the slices it divides.
#[test]
fn gradient_balance_at_every_rescaling() {
    for (name, g) in models() {
        let a = training(&g);
        let w = f64s(&g);
        let grads = Loss::new(&g).grads(&w);
        let worst = imbalance(&a, &g, &w, &grads);
        println!(
            "{name}: {} groups, worst imbalance {worst:.1e}",
            a.groups.len()
        );
        assert!(worst <= 1e-8, "{name}: {worst:e}");
    }
}

/// Spec §9.4: coordinates of a randomly rescaled copy (after its own conversion) equal the
/// original's; the canonical forms agree.
#[test]
fn coordinates_and_canonical_form_do_not_change_under_rescaling() {
    for (name, g) in models() {
        let a = training(&g);
        let c = conversion(&g);
        let (p0, v0) = EcStep::new(&c.basis).coordinates(&f64s(&c.canon));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let f: Vec<f32> = (0..a.rescalings())
            .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
            .collect();
        let mut moved = g.clone();
        a.rescale(&mut moved, |k| f[k]);
        let c2 = conversion(&moved);
        let (p1, v1) = EcStep::new(&c2.basis).coordinates(&f64s(&c2.canon));
        let mut worst = 0f64;
        for (k, xs) in &p0 {
            for (x, y) in xs.iter().zip(&p1[k]) {
                worst = worst.max((x - y).abs() / x.abs().max(1e-6));
            }
        }
        for (x, y) in v0.iter().flatten().zip(v1.iter().flatten()) {
            worst = worst.max((x - y).abs() / x.abs());
        }
        for (k, t) in &c.canon.params {
            worst = worst.max(common::rel_err(&c2.canon.params[k].as_f32(), &t.as_f32()));
        }
        println!("{name}: coordinates and canonical form of a rescaled copy differ by {worst:.1e}");
        assert!(worst <= 1e-4, "{name}: {worst:e}");
    }
}

/// Spec §9.5: ICR against central differences of the training-mode loss written as a
/// function of the path coordinates, in f64.
#[test]
fn icr_matches_finite_differences_in_training_mode() {
    for (name, g) in models() {
        let c = conversion(&g);
        // The first V's, and in a DAG block the V's whose own chain runs through others.
        let picks = |b: usize, n: usize| -> Vec<usize> {
            (0..n)
                .filter(|&k| k < 4 || (c.basis.blocks[b].v_chain(k).is_some() && k % 3 == 0))
                .take(24)
                .collect()
        };
        let (worst, checked) =
            common::train_loss::icr_check_training(&name, &c.basis, &c.canon, picks);
        println!("{name}: {checked} path gradients, worst relative error {worst:.1e}");
        assert!(checked > 10, "{name}: only {checked} checked");
    }
}

/// Spec §9.6: after one step with momentum and decay, the recomputed coordinates are
/// p - lr·m_p and V - lr·m_V.
/// Spec §9.6 with the step these tests share (momentum 0.5, decay 1e-3, R floored at 0.1, a
/// learning rate that moves each V by at most 1% of itself): one step from `w` (a copy),
/// against spec §5's coordinates ([`common::weight_allocation_errors`]).
fn weight_allocation(step: &EcStep, w: &Tensors, grads: &Tensors) -> (f64, f64, usize) {
    let cfg = StepConfig {
        lr: common::calm_lr(step, w, grads, 1e-2),
        momentum: 0.5,
        weight_decay: 1e-3,
        r_floor: 0.1,
    };
    common::weight_allocation_errors(step, &mut w.clone(), grads, &cfg)
}

#[test]
fn weight_allocation_lands_on_the_updated_coordinates() {
    for (name, g) in models() {
        let c = conversion(&g);
        let step = EcStep::new(&c.basis);
        let w = f64s(&c.canon);
        let grads = Loss::new(&c.canon).grads(&w);
        let (worst, moved, guarded) = weight_allocation(&step, &w, &grads);
        assert_eq!(guarded, 0);
        println!("{name}: WA worst relative error {worst:.1e}, largest move {moved:.1e}");
        assert!(moved >= 1e-4, "{name}: the step barely moved");
        assert!(worst <= 1e-9, "{name}: {worst:e}");
    }
}

/// The update programs (f32, whole tensors) against the f64 reference step on every model
/// here, three steps with momentum and decay, DAG blocks (chains through several V's)
/// included.
#[test]
fn programs_match_the_reference_step() {
    use ecc::ec::program::ProgramRunner;
    for (name, g) in models() {
        let c = conversion(&g);
        let reference = EcStep::new(&c.basis);
        let mut runner = ProgramRunner::new(&c.basis).unwrap();
        let ex = Executor::new(&c.canon).unwrap();
        let mut w = f64s(&c.canon);
        let mut state = EcState::default();
        let loss = Loss::new(&c.canon);
        let mut cfg = StepConfig {
            lr: 0.0,
            momentum: 0.9,
            weight_decay: 1e-3,
            r_floor: 0.1,
        };
        for step in 0..3 {
            let gs = loss.grads(&w);
            if step == 0 {
                cfg.lr = common::calm_lr(&reference, &w, &gs, 1e-2);
            }
            let gt: HashMap<String, Tensor> = gs
                .iter()
                .map(|(k, v)| {
                    let t = Tensor::from_vec(
                        v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                        c.canon.params[k].dims.clone(),
                        &Device::Cpu,
                    )
                    .unwrap();
                    (k.clone(), t)
                })
                .collect();
            let r1 = reference.step(&mut w, &gs, &mut state, &cfg);
            let r2 = runner.step(ex.params(), &gt, &cfg).unwrap();
            assert_eq!(r1, r2, "{name}: guard counts differ");
        }
        let mut worst = 0f64;
        for k in reference.params() {
            let got = common::values(ex.params()[&k].as_tensor());
            let want: Vec<f32> = w[&k].iter().map(|&x| x as f32).collect();
            worst = worst.max(common::rel_err(&got, &want));
        }
        println!("{name}: 3 program steps vs the f64 reference: {worst:.1e}");
        assert!(worst <= 1e-4, "{name}: {worst:e}");
    }
}

/// The zoo models of the fixture cache (random weights, as their files carry none): every
/// rescaling in a block, the canonical form keeps the function and is canonical.
#[test]
fn zoo_models_are_covered_and_canonical() {
    let Some(fx) = common::fixtures() else {
        return;
    };
    for (name, shape) in [
        ("squeezenet", vec![1, 3, 64, 64]),
        ("inception_v1", vec![1, 3, 224, 224]),
        ("resnet50", vec![1, 3, 224, 224]),
        ("densenet121", vec![1, 3, 224, 224]),
    ] {
        let g = common::zoo_model(&fx, name, shape);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let a = training(&g);
        let c = conversion(&g);
        let r = c.report(name, &g);
        let xs = inputs(&g, DType::F32);
        let y0 = common::values(&Executor::new(&g).unwrap().forward(&xs).unwrap()[0]);
        let y1 = common::values(&Executor::new(&c.canon).unwrap().forward(&xs).unwrap()[0]);
        let kept = common::rel_err(&y1, &y0);
        let f: Vec<f32> = (0..a.rescalings())
            .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
            .collect();
        let mut moved = g.clone();
        a.rescale(&mut moved, |k| f[k]);
        let c2 = conversion(&moved);
        let mut differ = 0f64;
        for (k, t) in &c.canon.params {
            differ = differ.max(common::rel_err(&c2.canon.params[k].as_f32(), &t.as_f32()));
        }
        println!(
            "{name}: unit coverage {:.4}, coverage {:.4}; canonical form keeps the outputs to {kept:.1e}, a rescaled copy's differs by {differ:.1e}",
            r.unit_coverage, r.coverage
        );
        assert_eq!(r.unit_coverage, 1.0, "{name}");
        assert!(r.coverage >= 0.99, "{name}: {}", r.coverage);
        assert!(kept <= 1e-4, "{name}: {kept:e}");
        assert!(differ <= 1e-4, "{name}: {differ:e}");
    }
}

/// EC-SGD trains a residual DAG without BN (one DAG block: a stream tied to a
/// concatenation, chains through several V's) and the same DAG with BN (star blocks) on the
/// digits, as well as SGD does, with no non-finite step.
#[test]
fn ec_sgd_trains_dag_and_star_blocks() {
    use ecc::train::{train, OptimizerKind, TrainConfig};
    let split = ecc::data::digits().unwrap();
    for with_bn in [false, true] {
        let g = dag_model_sized(3, with_bn, 64, 10);
        let kind = if with_bn { "star" } else { "dag" };
        let c = conversion(&g);
        assert!(c
            .basis
            .blocks
            .iter()
            .any(|b| format!("{:?}", b.kind).to_lowercase() == kind));
        let mut acc = vec![];
        for opt in [OptimizerKind::Sgd, OptimizerKind::EcSgd] {
            let cfg = TrainConfig {
                optimizer: opt,
                epochs: 4,
                ..Default::default()
            };
            let (trained, h) = train(&g, &split, &cfg, |_| {}).unwrap();
            assert!(trained
                .params
                .values()
                .all(|p| p.as_f32().iter().all(|x| x.is_finite())));
            acc.push((
                h[3].test_accuracy,
                h.iter().map(|m| m.guarded_steps).sum::<usize>(),
            ));
        }
        println!(
            "{kind} block (BN {with_bn}), digits, 4 epochs: SGD {:.4}, EC-SGD {:.4} (guarded steps {})",
            acc[0].0, acc[1].0, acc[1].1
        );
        assert!(acc[1].0 >= 0.5 && acc[1].0 >= acc[0].0 - 0.08, "{acc:?}");
    }
}

/// Spec §9.4 to §9.6 on the full-size ResNet-20 and PlainNet-20 with BN in training mode
/// (3x32x32, 272k and 270k parameters): coordinates of a rescaled copy, ICR against finite
/// differences on a sample of coordinates, weight allocation.
#[test]
fn full_size_resnet20_and_plainnet20() {
    for spec in ["resnet:3x32x32-n3", "plain:3x32x32-n3"] {
        let g = ecc::zoo::build(&ecc::zoo::Spec::parse(spec).unwrap(), 4, true).unwrap();
        let a = training(&g);
        let c = conversion(&g);
        let r = c.report(spec, &g);
        assert_eq!(r.unit_coverage, 1.0);
        let step = EcStep::new(&c.basis);
        // §9.4
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let f: Vec<f32> = (0..a.rescalings())
            .map(|_| 4f32.powf(rng.gen_range(-1.0..1.0)))
            .collect();
        let mut moved = g.clone();
        a.rescale(&mut moved, |k| f[k]);
        let c2 = conversion(&moved);
        let (p0, q0) = step.coordinates(&f64s(&c.canon));
        let (p1, q1) = EcStep::new(&c2.basis).coordinates(&f64s(&c2.canon));
        let mut coords = 0f64;
        for (k, xs) in &p0 {
            for (x, y) in xs.iter().zip(&p1[k]) {
                coords = coords.max((x - y).abs() / x.abs().max(1e-6));
            }
        }
        for (x, y) in q0.iter().flatten().zip(q1.iter().flatten()) {
            coords = coords.max((x - y).abs() / x.abs());
        }
        // §9.5 on a sample
        let loss = Loss::new(&c.canon);
        let w0 = f64s(&c.canon);
        let grads = loss.grads(&w0);
        let icr = step.icr(&w0, &grads);
        let l_at = |p: &Tensors, q: &[Vec<f64>]| loss.at(&step.weights_from(&w0, p, q));
        let floor = 1e-6 * icr.dp.values().flatten().fold(0f64, |m, x| m.max(x.abs()));
        let mut icr_worst = 0f64;
        let names = step.params();
        for n in 0..8 {
            let k = &names[(n * 7) % names.len()];
            let i = rng.gen_range(0..p0[k].len());
            if p0[k][i] != 0.0 {
                let fd = common::fd_p(&l_at, &p0, &q0, k, i, 1e-5);
                let an = icr.dp[k][i];
                println!("  dL/dp {k}[{i}]: ICR {an:e}, finite difference {fd:e}");
                icr_worst = icr_worst.max(common::rel_diff(fd, an, floor));
            }
        }
        // Moving a V moves every scalar of its chain: a larger step crosses more ReLU kinks
        // of the whole batch, so a smaller relative step than for single scalars.
        for bi in 0..2 {
            let fd = common::fd_q(&l_at, &p0, &q0, bi, 0, 1e-7);
            let an = icr.dv[bi][0];
            println!("  dL/dq block {bi} V 0: ICR {an:e}, finite difference {fd:e}");
            icr_worst = icr_worst.max(common::rel_diff(fd, an, floor));
        }
        // §9.6
        let (wa, moved_by, guarded) = weight_allocation(&step, &w0, &grads);
        println!(
            "{spec}: {} blocks; rescaled copy's coordinates differ by {coords:.1e}; ICR vs finite differences {icr_worst:.1e}; WA {wa:.1e} (largest move {moved_by:.1e})",
            r.blocks.len()
        );
        assert!(coords <= 1e-4, "{spec}: {coords:e}");
        assert!(icr_worst <= 1e-3, "{spec}: {icr_worst:e}");
        assert!(
            wa <= 1e-9 && moved_by >= 1e-4 && guarded == 0,
            "{spec}: {wa:e}"
        );
    }
}

/// Spec §9.2, §9.5 and §9.6 on the DAG blocks of zoo squeezenet (fan-out, concatenation;
/// at 64x64) and inception_v1 (at 224x224), random weights, in f64.
#[test]
fn zoo_dag_models_pass_gradient_balance_icr_and_weight_allocation() {
    let Some(fx) = common::fixtures() else {
        return;
    };
    // (model, input, every how many tensors, coordinates per tensor)
    for (name, shape, every, per) in [
        ("squeezenet", vec![1, 3, 64, 64], 3, 3),
        ("inception_v1", vec![1, 3, 224, 224], 25, 2),
    ] {
        // Logits (the trailing Softmax dropped, as in training): larger gradients to resolve.
        let g = ecc::train::logits_graph(&common::zoo_model(&fx, name, shape));
        let a = training(&g);
        let c = conversion(&g);
        let dag = |b: usize| c.basis.blocks[b].kind == ecc::ec::basis::BlockKind::Dag;
        assert!((0..c.basis.blocks.len()).any(dag), "{name}");
        let loss = Loss::new(&c.canon);
        let w0 = f64s(&c.canon);
        let grads = loss.grads(&w0);
        // §9.2 on the canonical model.
        let balance = imbalance(&a, &c.canon, &w0, &grads);
        // §9.5 on a sample: `per` coordinates of every `every`-th tensor, the first V's and
        // some V's whose own chain runs through others.
        let step = EcStep::new(&c.basis);
        let icr = step.icr(&w0, &grads);
        let (pc, qc) = step.coordinates(&w0);
        let l_at = |p: &Tensors, q: &[Vec<f64>]| loss.at(&step.weights_from(&w0, p, q));
        let floor = 1e-6 * icr.dp.values().flatten().fold(0f64, |m, x| m.max(x.abs()));
        let params: Vec<String> = step.params().into_iter().step_by(every).collect();
        let picks = |b: usize, n: usize| -> Vec<usize> {
            (0..n)
                .filter(|&k| {
                    k < 2 || (dag(b) && c.basis.blocks[b].v_chain(k).is_some() && k % 31 == 0)
                })
                .take(10)
                .collect()
        };
        let (icr_worst, checked) =
            common::icr_check(name, &icr, &l_at, &pc, &qc, &params, per, picks, floor);
        // §9.6
        let (wa, moved, guarded) = weight_allocation(&step, &w0, &grads);
        println!(
            "{name}: gradient balance {balance:.1e} over {} groups; ICR {icr_worst:.1e} over {checked} coordinates; WA {wa:.1e} (largest move {moved:.1e})",
            a.groups.len()
        );
        assert!(balance <= 1e-6, "{name}: {balance:e}");
        assert!(checked >= 5, "{name}: {checked}");
        assert!(
            wa <= 1e-9 && moved >= 1e-4 && guarded == 0,
            "{name}: {wa:e}"
        );
    }
}
