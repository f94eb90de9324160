//! `gsgd-ref`, the reference implementation's heuristic for BN networks (spec §11, last
//! paragraph; docs/gsgd-ref.md): its blocks are the reference's hand-written lists, its
//! step is spec §5's on those blocks with the real model's gradients (update programs
//! against the f64 reference step, ICR against finite differences of the training-mode
//! loss), and it is not a function of the class: an equivalent network steps elsewhere.

mod common;

use candle_core::{Device, Tensor};
use common::mlp64::f64s;
use common::train_loss::Loss;
use ecc::ec::basis::BlockKind;
use ecc::ec::step::{EcState, EcStep, StepConfig, Tensors};
use ecc::ec::{reference, Basis};
use ecc::ir::Graph;
use ecc::train::{optimizer_for, OptimizerKind, Schedule, TrainConfig};
use std::collections::{HashMap, HashSet};

fn model(spec: &str) -> Graph {
    let spec = ecc::zoo::Spec::parse(spec).unwrap();
    ecc::train::logits_graph(&ecc::zoo::build(&spec, 3, false).unwrap())
}

/// Each block's layers by weight name, and the name of its free layer.
fn chains(b: &Basis) -> Vec<(Vec<String>, String)> {
    b.blocks
        .iter()
        .map(|blk| {
            let BlockKind::Chain { free, .. } = blk.kind else {
                panic!("gsgd-ref has chain blocks only")
            };
            let names: Vec<String> = blk
                .layers
                .iter()
                .map(|l| l.weight.param.trim_end_matches(".weight").to_string())
                .collect();
            let free = names[free].clone();
            (names, free)
        })
        .collect()
}

fn cfg(momentum: f64, weight_decay: f64) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerKind::GsgdRef,
        epochs: 1,
        batch: 5,
        lr: 0.1,
        schedule: Schedule::Constant,
        momentum,
        weight_decay,
        seed: 0,
        skeleton_init: true,
        ..TrainConfig::default()
    }
}

/// The reference's lists (gsgd_cnn/models/model_utils.py): PlainNet, one chain per stage of
/// that stage's convs (the first conv and the classifier outside); ResNet, the two convs of
/// each basic block. On an MLP nothing is cut: ecc's own chain blocks.
#[test]
fn blocks_are_the_references_lists() {
    let plain = chains(&reference::basis(&model("plain:1x8x8-n2-w4.6.8")));
    let want: Vec<Vec<String>> = (1..=3)
        .map(|s| {
            ["0.conv1", "0.conv2", "1.conv1", "1.conv2"]
                .iter()
                .map(|c| format!("layer{s}.{c}"))
                .collect()
        })
        .collect();
    assert_eq!(plain.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), want);
    // The reference's free layer: the first of the widest hidden layers.
    for (layers, free) in &plain {
        assert_eq!(free, &layers[0]);
    }
    let resnet = chains(&reference::basis(&model("resnet:1x8x8-n2-w4.6.8")));
    let want: Vec<Vec<String>> = (1..=3)
        .flat_map(|s| {
            (0..2).map(move |j| vec![format!("layer{s}.{j}.conv1"), format!("layer{s}.{j}.conv2")])
        })
        .collect();
    assert_eq!(resnet.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), want);
    let mlp = model("mlp:20-12-10-6");
    let exact = ecc::ec::convert(&mlp);
    assert_eq!(chains(&reference::basis(&mlp)), chains(&exact.basis));
}

/// The skeleton is the reference's (`generate_eye_cnn`, at the centre tap): in a block's
/// first layer (o, o mod in) for every output o, in its last (i mod out, i) for every
/// input i, in the others the first pattern when in <= out and the second otherwise; the
/// start sets all of them to +1 (`red_init` 1) and leaves every other weight alone.
#[test]
fn the_skeleton_and_the_start_are_the_references() {
    for spec in ["plain:1x8x8-n2-w4.6.8", "resnet:1x8x8-n1-w4.6.8"] {
        let g = model(spec);
        let (start, _, basis) = start(&g, &cfg(0.0, 0.0));
        let mut reset = 0;
        for blk in &basis.blocks {
            let n = blk.layers.len();
            for (k, l) in blk.layers.iter().enumerate() {
                let t = &l.weight;
                let [out, inp, kh, kw] = t.dims[..] else {
                    panic!("{spec}: conv weights")
                };
                let first = |o: usize| (o, o % inp);
                let last = |i: usize| (i % out, i);
                let pairs: Vec<(usize, usize)> = if k == 0 || (k + 1 < n && inp <= out) {
                    (0..out).map(first).collect()
                } else {
                    (0..inp).map(last).collect()
                };
                let mut want: Vec<usize> = pairs
                    .iter()
                    .map(|&(o, i)| ((o * inp + i) * kh + kh / 2) * kw + kw / 2)
                    .collect();
                want.sort_unstable();
                let mut got = t.fixed.clone();
                got.sort_unstable();
                assert_eq!(got, want, "{spec}: {}", t.param);
                let (w0, w1) = (g.params[&t.param].as_f32(), start.params[&t.param].as_f32());
                for i in 0..w0.len() {
                    let want = if got.binary_search(&i).is_ok() {
                        1.0
                    } else {
                        w0[i]
                    };
                    assert_eq!(w1[i], want, "{spec}: {}[{i}]", t.param);
                }
                reset += got.len();
            }
        }
        assert!(reset > 0);
    }
}

/// The start and the gsgd-ref optimizer of `g`, and its basis.
fn start(g: &Graph, c: &TrainConfig) -> (Graph, Box<dyn ecc::train::optim::Optimizer>, Basis) {
    let (start, opt) = optimizer_for(g, c).unwrap();
    (start, opt, reference::basis(g))
}

/// One step in f64 as spec §5 says on `basis`'s blocks and SGD (momentum, decay) on the
/// other trainable tensors.
struct RefStep<'a> {
    step: EcStep,
    state: EcState,
    buf: Tensors,
    rest: Vec<String>,
    cfg: StepConfig,
    g: &'a Graph,
}

impl<'a> RefStep<'a> {
    fn new(g: &'a Graph, basis: &Basis, cfg: StepConfig) -> Self {
        let block = basis.block_params();
        RefStep {
            step: EcStep::new(basis),
            state: EcState::default(),
            buf: Tensors::new(),
            rest: g
                .trainable_params()
                .into_iter()
                .filter(|k| !block.contains(k))
                .collect(),
            cfg,
            g,
        }
    }
    fn apply(&mut self, w: &mut Tensors, grads: &Tensors) -> usize {
        let guarded = self.step.step(w, grads, &mut self.state, &self.cfg);
        for k in &self.rest {
            let m = self
                .buf
                .entry(k.clone())
                .or_insert_with(|| vec![0.0; self.g.params[k].len()]);
            for (i, x) in w.get_mut(k).unwrap().iter_mut().enumerate() {
                m[i] = self.cfg.momentum * m[i] + grads[k][i] + self.cfg.weight_decay * *x;
                *x -= self.cfg.lr * m[i];
            }
        }
        guarded
    }
}

/// Three steps of `ecc train --optimizer gsgd-ref`'s optimizer (update programs in f32,
/// SGD for the rest) against the f64 reference step, gradients of the training-mode loss
/// (batch statistics) at each step; the start is the skeleton reset (fixed scalars ±1).
#[test]
fn programs_match_the_reference_step_through_batchnorm() {
    for spec in ["plain:1x8x8-n2-w4.6.8", "resnet:1x8x8-n1-w4.6.8"] {
        let g = model(spec);
        let c = cfg(0.9, 1e-3);
        let (start, mut opt, basis) = start(&g, &c);
        for t in basis.blocks.iter().flat_map(|b| b.tensors()) {
            let w = start.params[&t.param].as_f32();
            assert!(t.fixed.iter().all(|&i| w[i] == 1.0), "{spec}: reset");
        }
        let loss = Loss::new(&start);
        let mut w = f64s(&start);
        let ex = ecc::exec::Executor::new(&start).unwrap();
        let mut reference: Option<RefStep> = None;
        for _ in 0..3 {
            let gs = loss.grads(&w);
            let r = reference.get_or_insert_with(|| {
                let sc = StepConfig {
                    lr: common::calm_lr(&EcStep::new(&basis), &w, &gs, 1e-2),
                    momentum: c.momentum,
                    weight_decay: c.weight_decay,
                    r_floor: 0.1,
                };
                RefStep::new(&start, &basis, sc)
            });
            let gt: HashMap<String, Tensor> = gs
                .iter()
                .map(|(k, v)| {
                    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    let t = Tensor::from_vec(v32, start.params[k].dims.clone(), &Device::Cpu);
                    (k.clone(), t.unwrap())
                })
                .collect();
            let lr = r.cfg.lr;
            assert_eq!(r.apply(&mut w, &gs), 0, "{spec}: guard");
            assert_eq!(opt.step(ex.params(), &gt, lr).unwrap(), 0);
        }
        let mut worst = 0f64;
        let mut moved = 0f64;
        for k in start.trainable_params() {
            let got = common::values(ex.params()[&k].as_tensor());
            let want: Vec<f32> = w[&k].iter().map(|&x| x as f32).collect();
            worst = worst.max(common::rel_err(&got, &want));
            if basis.block_params().contains(&k) {
                moved = moved.max(common::rel_err(&start.params[&k].as_f32(), &want));
            }
        }
        println!("{spec}: 3 gsgd-ref steps vs the f64 reference: {worst:.1e} (block tensors moved {moved:.1e})");
        assert!(moved >= 1e-3, "{spec}: the steps barely moved");
        assert!(worst <= 1e-4, "{spec}: {worst:e}");
    }
}

/// Spec §9.5 for the heuristic's coordinates: the ICR on the reference's blocks, with the
/// gradients of the real (training-mode BN) loss, against central differences of that loss
/// through the weight allocation map (p, V) -> w, in f64. The chain rule holds whatever the
/// loss; what the heuristic gives up is invariance (next test).
#[test]
fn icr_matches_finite_differences_of_the_batchnorm_loss() {
    for spec in ["plain:1x8x8-n2-w4.6.8", "resnet:1x8x8-n1-w4.6.8"] {
        let g = model(spec);
        let (start, _, basis) = start(&g, &cfg(0.0, 0.0));
        let (worst, checked) =
            common::train_loss::icr_check_training(spec, &basis, &start, |_, n| {
                (0..n.min(6)).collect()
            });
        println!("{spec}: {checked} path gradients, worst relative error {worst:.1e}");
        assert!(checked > 20, "{spec}: only {checked} checked");
    }
}

/// Not a method of the class space: a rescaling through a BN's affine unit (the stem BN's
/// gamma_j and beta_j times 2, input channel j of the stage's free first layer halved; the training function is
/// unchanged, and no fixed skeleton scalar moves, only
/// free V's) gives an equivalent network, and one
/// gsgd-ref step from each lands on two different functions. (EC-SGD's step is a function
/// of the class: tests/ec_dag.rs, tests/invariance.rs.)
#[test]
fn an_equivalent_network_steps_to_another_function() {
    let g = model("plain:1x8x8-n2-w4.6.8");
    let (a, _, basis) = start(&g, &cfg(0.0, 0.0));
    let mut b = a.clone();
    let j = 1;
    for p in ["conv1.bn.weight", "conv1.bn.bias"] {
        let mut v = b.params[p].as_f32();
        v[j] *= 2.0;
        b.params.get_mut(p).unwrap().data = ecc::ir::TensorData::F32(v);
    }
    let fixed: HashSet<(String, usize)> = basis
        .blocks
        .iter()
        .flat_map(|blk| blk.tensors())
        .flat_map(|t| {
            let v: HashSet<usize> = t.v.iter().map(|&(_, i)| i).collect();
            t.fixed
                .iter()
                .filter(move |i| !v.contains(i))
                .map(|&i| (t.param.clone(), i))
                .collect::<Vec<_>>()
        })
        .collect();
    let conv = "layer1.0.conv1.weight";
    let dims = b.params[conv].dims.clone();
    let mut v = b.params[conv].as_f32();
    let taps = dims[2] * dims[3];
    for o in 0..dims[0] {
        for t in 0..taps {
            let i = (o * dims[1] + j) * taps + t;
            assert!(
                !fixed.contains(&(conv.to_string(), i)),
                "a fixed scalar moved"
            );
            v[i] *= 0.5;
        }
    }
    b.params.get_mut(conv).unwrap().data = ecc::ir::TensorData::F32(v);
    let out = |g: &Graph, w: &Tensors| {
        let l = Loss::new(g);
        l.set(w);
        common::values(
            &l.ex.forward_train(&l.xs, 0).unwrap()[0]
                .to_dtype(candle_core::DType::F32)
                .unwrap(),
        )
    };
    let (wa, wb) = (f64s(&a), f64s(&b));
    let before = common::rel_err(&out(&a, &wa), &out(&b, &wb));
    assert!(before <= 1e-6, "not equivalent: {before:e}");
    // A learning rate that moves no V by more than 1%.
    let lr = common::calm_lr(&EcStep::new(&basis), &wa, &Loss::new(&a).grads(&wa), 1e-2);
    let stepped = |g: &Graph, mut w: Tensors| {
        let sc = StepConfig {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            r_floor: 0.1,
        };
        let grads = Loss::new(g).grads(&w);
        assert_eq!(RefStep::new(g, &basis, sc).apply(&mut w, &grads), 0);
        out(g, &w)
    };
    let after = common::rel_err(&stepped(&a, wa), &stepped(&b, wb));
    println!("equivalent before the step: {before:.1e}; after one gsgd-ref step: {after:.1e}");
    assert!(after >= 1e3 * before.max(1e-7), "{after:e}");
}
