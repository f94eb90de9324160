//! Training: cross-entropy on logits, learning-rate schedules, and the loop (seeded shuffle,
//! evaluation each epoch, metrics). EC-SGD trains the canonical model of the EC pass.

pub mod optim;

use crate::data::{Dataset, Split};
use crate::ec::program::ProgramRunner;
use crate::ec::step::StepConfig;
use crate::error::{Error, Result};
use crate::exec::Executor;
use crate::ir::{Graph, Op};
use candle_core::{Device, Tensor, Var, D};
use optim::{BalancedSgd, EcSgd, Optimizer, PathSgd, Sgd};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Learning rate as a function of the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
    /// lr0 * exp(-k * epoch).
    Exp {
        k: f64,
    },
    /// Cosine from lr0 to 0 over the run.
    Cosine,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::usage(format!(
                "--schedule '{s}': expected constant, step:EVERY:GAMMA, exp:K or cosine"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        Ok(match parts.as_slice() {
            ["constant"] => Schedule::Constant,
            ["cosine"] => Schedule::Cosine,
            ["exp", k] => Schedule::Exp {
                k: k.parse()
                    .ok()
                    .filter(|k: &f64| k.is_finite())
                    .ok_or_else(bad)?,
            },
            ["step", e, g] => Schedule::Step {
                every: e.parse().ok().filter(|&e| e > 0).ok_or_else(bad)?,
                gamma: g
                    .parse()
                    .ok()
                    .filter(|g: &f64| g.is_finite() && *g > 0.0)
                    .ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        })
    }
    pub fn lr(&self, lr0: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Constant => lr0,
            Schedule::Step { every, gamma } => lr0 * gamma.powi((epoch / every) as i32),
            Schedule::Exp { k } => lr0 * (-k * epoch as f64).exp(),
            Schedule::Cosine => {
                0.5 * lr0
                    * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    EcSgd,
    PathSgd,
    /// A control: plain SGD started from EC-SGD's starting model (skeleton weights at ±1,
    /// or the canonical form with `keep_function`), to tell the optimizer's effect from
    /// that of its initialization.
    SgdEcInit,
    /// SGD on the balanced representative of the class, rebalanced after every step
    /// (docs/balanced-sgd.md): a function of the class at SGD's scale, for fine-tuning.
    BalancedSgd,
    /// The reference implementation's heuristic (spec §11, docs/gsgd-ref.md): EC-SGD's
    /// update on the blocks the public G-SGD code uses, BatchNormalization read as identity
    /// in the path structure; not a method of the class space. Reproduces the treatment
    /// behind the paper's PlainNet/ResNet numbers.
    GsgdRef,
}

impl OptimizerKind {
    /// Every optimizer; the order is part of checkpoints (`run_key`): append only.
    pub const ALL: [OptimizerKind; 6] = [
        OptimizerKind::Sgd,
        OptimizerKind::EcSgd,
        OptimizerKind::PathSgd,
        OptimizerKind::SgdEcInit,
        OptimizerKind::BalancedSgd,
        OptimizerKind::GsgdRef,
    ];

    /// The optimizer of a [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The name used on the command line, in metrics and in file names.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::EcSgd => "ec-sgd",
            OptimizerKind::PathSgd => "path-sgd",
            OptimizerKind::SgdEcInit => "sgd-ec-init",
            OptimizerKind::BalancedSgd => "balanced-sgd",
            OptimizerKind::GsgdRef => "gsgd-ref",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// EC-SGD: set the free skeleton values V to ±1 before training (the reference's
    /// initialization; it changes the function, so only for models that start training).
    pub skeleton_init: bool,
    /// Write a checkpoint (parameters, optimizer state, epoch) here after every epoch.
    pub checkpoint: Option<std::path::PathBuf>,
    /// Continue from `checkpoint` if it exists.
    pub resume: bool,
    /// Augment each training batch (`data::augment`: random crop with 4 pixels of padding,
    /// horizontal flip), drawn from the seed and the step.
    pub augment: bool,
}

impl Default for TrainConfig {
    /// The defaults of `ecc train`: SGD, 10 epochs, batch 32, lr 0.05 constant, momentum 0.9.
    fn default() -> Self {
        TrainConfig {
            optimizer: OptimizerKind::Sgd,
            epochs: 10,
            batch: 32,
            lr: 0.05,
            schedule: Schedule::Constant,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
            skeleton_init: true,
            checkpoint: None,
            resume: false,
            augment: false,
        }
    }
}

/// The order of epoch `epoch`: a function of the seed and the epoch alone, so a resumed run
/// shuffles exactly as an uninterrupted one.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mixed = seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(mixed));
    order
}

/// The seed of the training-mode pass of step `step` of epoch `epoch` (Dropout's masks): a
/// function of the run's seed and the step alone, so a resumed run draws the same masks.
pub fn step_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    (seed ^ 0xD1B5_4A32_D192_ED03)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(((epoch as u64) << 32) | step as u64)
}

/// Where a run stands, as a checkpoint records it: the epochs done, the steps done in the
/// next one with that epoch's running sums so far, and the run's guarded-step count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Progress {
    epoch: usize,
    step: usize,
    total: f64,
    seen: usize,
    hits: usize,
    guarded: usize,
}

/// What a checkpoint belongs to, checked on resume: the optimizer, the batch size and the
/// seed (the model is checked parameter by parameter).
fn run_key(cfg: &TrainConfig) -> [u32; 3] {
    let opt = OptimizerKind::ALL
        .iter()
        .position(|k| *k == cfg.optimizer)
        .unwrap_or(0) as u32;
    [opt, cfg.batch as u32, cfg.seed as u32]
}

/// What a checkpoint belongs to besides its parameters, as (option, value) pairs: the
/// optimizer and its settings, the batch size, the seed and the data set. Saved as JSON in
/// `meta/setup` and compared on resume: a run resumed with other settings would silently
/// train something else.
fn setup(cfg: &TrainConfig, split: &Split) -> Vec<(&'static str, String)> {
    vec![
        ("--optimizer", cfg.optimizer.name().to_string()),
        ("--batch", cfg.batch.to_string()),
        ("--seed", cfg.seed.to_string()),
        ("--lr", cfg.lr.to_string()),
        ("--schedule", format!("{:?}", cfg.schedule)),
        ("--momentum", cfg.momentum.to_string()),
        ("--weight-decay", cfg.weight_decay.to_string()),
        ("--keep-function", (!cfg.skeleton_init).to_string()),
        ("--augment", cfg.augment.to_string()),
        (
            "--data",
            format!(
                "{} ({} train / {} test)",
                split.name,
                split.train.len(),
                split.test.len()
            ),
        ),
    ]
}

/// The first differences between a checkpoint's setup and this run's, as "--lr 0.1 there,
/// 0.05 here" (empty when they agree; fields the checkpoint does not record are not compared).
fn setup_mismatch(saved: &[u8], now: &[(&'static str, String)]) -> Vec<String> {
    let saved: HashMap<String, String> = serde_json::from_slice(saved).unwrap_or_default();
    now.iter()
        .filter_map(|(k, v)| {
            let there = saved.get(*k)?;
            (there != v).then(|| format!("{k} {there} there, {v} here"))
        })
        .collect()
}

/// Write parameters, optimizer state and the run's progress atomically (temporary file,
/// then rename): a failure leaves the previous checkpoint as it was.
fn save_checkpoint(
    path: &std::path::Path,
    ex: &Executor,
    opt: &dyn Optimizer,
    cfg: &TrainConfig,
    split: &Split,
    at: Progress,
) -> Result<()> {
    let mut t: HashMap<String, Tensor> = ex
        .params()
        .iter()
        .map(|(k, v)| (format!("param/{k}"), v.as_tensor().clone()))
        .collect();
    t.extend(opt.state());
    let dev = ex.device();
    t.insert("meta/epoch".into(), Tensor::new(&[at.epoch as u32], dev)?);
    t.insert("meta/step".into(), Tensor::new(&[at.step as u32], dev)?);
    t.insert("meta/total".into(), Tensor::new(&[at.total], dev)?);
    let counts = [at.seen as u32, at.hits as u32, at.guarded as u32];
    t.insert("meta/counts".into(), Tensor::new(&counts, dev)?);
    t.insert("meta/run".into(), Tensor::new(&run_key(cfg), dev)?);
    let fields: HashMap<&str, String> = setup(cfg, split).into_iter().collect();
    let json = serde_json::to_vec(&fields).map_err(|e| Error::exec(e.to_string()))?;
    t.insert("meta/setup".into(), Tensor::new(json.as_slice(), dev)?);
    crate::files::write_atomic(path, |tmp| {
        candle_core::safetensors::save(&t, tmp).map_err(|e| e.to_string())
    })
}

/// The epochs a checkpoint has finished (0 when there is no file): where a resumed run
/// starts, and so which metrics lines it keeps ([`metrics_upto`]).
pub fn checkpoint_epoch(path: &std::path::Path) -> Result<usize> {
    if !path.is_file() {
        return Ok(0);
    }
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::checkpoint(e.to_string()).in_file(path))?;
    let e = t
        .get("meta/epoch")
        .ok_or_else(|| Error::checkpoint("it lacks its epoch").in_file(path))?;
    Ok(e.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize)
}

/// The lines of a metrics file (JSON, one per epoch) of epochs up to `upto`. A run writes an
/// epoch's line before its checkpoint, so a resumed run keeps the lines of the epochs its
/// checkpoint holds and writes the others again: a kill between the two loses nothing and
/// repeats nothing.
pub fn metrics_upto(path: &std::path::Path, upto: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .is_some_and(|e| e as usize <= upto)
        })
        .map(String::from)
        .collect()
}

/// Load a checkpoint into the executor and optimizer, after checking that it belongs to
/// this run (same parameters and shapes, optimizer, batch size and seed); returns where the
/// run stands.
fn load_checkpoint(
    path: &std::path::Path,
    ex: &Executor,
    opt: &mut dyn Optimizer,
    cfg: &TrainConfig,
    split: &Split,
) -> Result<Progress> {
    let t = candle_core::safetensors::load(path, ex.device())
        .map_err(|e| Error::checkpoint(e.to_string()).in_file(path))?;
    let mismatch = |what: String| {
        Err(Error::usage(format!("the checkpoint belongs to another run: {what}")).in_file(path))
    };
    if let Some(run) = t.get("meta/run") {
        let saved = run.to_vec1::<u32>()?;
        let now = run_key(cfg);
        let kind = |i: u32| OptimizerKind::ALL.get(i as usize).map_or("?", |k| k.name());
        if saved.len() == 3 && saved[0] != now[0] {
            return mismatch(format!(
                "optimizer {} there, --optimizer {} here",
                kind(saved[0]),
                kind(now[0])
            ));
        }
        if saved.len() == 3 && saved[1] != now[1] {
            return mismatch(format!("batch {} there, --batch {} here", saved[1], now[1]));
        }
        if saved.len() == 3 && saved[2] != now[2] {
            return mismatch(format!("seed {} there, --seed {} here", saved[2], now[2]));
        }
    }
    if let Some(saved) = t.get("meta/setup") {
        let diff = setup_mismatch(&saved.to_vec1::<u8>()?, &setup(cfg, split));
        if !diff.is_empty() {
            return mismatch(diff.join("; "));
        }
    }
    for k in t.keys().filter_map(|k| k.strip_prefix("param/")) {
        if !ex.params().contains_key(k) {
            return mismatch(format!("it has a parameter '{k}' that the model has not"));
        }
    }
    for (k, v) in ex.params() {
        let saved = t.get(&format!("param/{k}")).ok_or_else(|| {
            Error::usage(format!(
                "the checkpoint belongs to another run: it lacks the model's parameter '{k}'"
            ))
            .in_file(path)
        })?;
        if saved.dims() != v.dims() {
            return mismatch(format!(
                "parameter '{k}' is {:?} there, {:?} in the model",
                saved.dims(),
                v.dims()
            ));
        }
        v.set(saved)?;
    }
    opt.load_state(&t)?;
    let epoch = t
        .get("meta/epoch")
        .ok_or_else(|| Error::checkpoint("it lacks its epoch").in_file(path))?;
    let first = |k: &str| -> Result<Option<u32>> {
        Ok(t.get(k)
            .map(|s| s.to_vec1::<u32>())
            .transpose()?
            .map(|v| v[0]))
    };
    let counts = t
        .get("meta/counts")
        .map(|s| s.to_vec1::<u32>())
        .transpose()?
        .unwrap_or_default();
    let count = |i: usize| counts.get(i).copied().unwrap_or(0) as usize;
    Ok(Progress {
        epoch: epoch.to_vec1::<u32>()?[0] as usize,
        step: first("meta/step")?.unwrap_or(0) as usize,
        total: t
            .get("meta/total")
            .map(|s| s.to_vec1::<f64>())
            .transpose()?
            .map_or(0.0, |v| v[0]),
        seen: count(0),
        hits: count(1),
        guarded: count(2),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    pub optimizer: OptimizerKind,
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub seconds: f64,
    /// EC-SGD steps in which the R guard engaged.
    pub guarded_steps: usize,
    /// The machine that computed the row ([`crate::exec::cpu::machine`]): a rerun gives the
    /// same bits on the same kind of machine only.
    pub machine: String,
    /// The build that computed the row ([`crate::BUILD`]): builds can round differently too.
    pub build: String,
    /// Epoch-0 rows only: which model the row evaluates ([`start_metrics`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
}

/// The model an epoch-0 row evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// The model as given.
    Given,
    /// The model after the skeleton reset EC-SGD and the control start from (every fixed
    /// skeleton weight and V at ±1, spec §4 and the reference's initialization): another
    /// function.
    SkeletonReset,
}

/// True when training with `cfg` starts from another function than the model's own: the
/// skeleton reset of EC-SGD and `sgd-ec-init` without `--keep-function`.
pub fn start_changes_function(cfg: &TrainConfig) -> bool {
    cfg.skeleton_init
        && matches!(
            cfg.optimizer,
            OptimizerKind::EcSgd
                | OptimizerKind::SgdEcInit
                | OptimizerKind::BalancedSgd
                | OptimizerKind::GsgdRef
        )
}

/// The number of classes a model outputs: the product of its first output's axes after the
/// batch axis.
pub fn classes(g: &Graph) -> usize {
    g.outputs
        .first()
        .and_then(|o| g.shapes.get(&o.name))
        .map_or(0, |s| s.dims.iter().skip(1).product())
}

/// Whether a model whose test loss (cross-entropy, `classes` classes) is `test_loss` looks
/// trained: below half of ln(classes), the loss of a uniform guess, which a fresh model
/// starts near. `ecc train` then uses its fine-tuning defaults (README, "Fine-tuning").
pub fn looks_trained(test_loss: f64, classes: usize) -> bool {
    classes >= 2 && test_loss < 0.5 * (classes as f64).ln()
}

/// Epoch-0 rows: the model as given and, when the optimizer's start changes the function
/// ([`start_changes_function`]), the model it starts from ([`start_row`] each), so that a
/// start that makes a trained model worse is shown before the first step (issue 15).
pub fn start_metrics(
    graph: &Graph,
    split: &Split,
    cfg: &TrainConfig,
    train_loss: bool,
) -> Result<Vec<EpochMetrics>> {
    let mut rows = vec![start_row(graph, split, cfg, Start::Given, train_loss)?];
    if start_changes_function(cfg) {
        rows.push(start_row(
            graph,
            split,
            cfg,
            Start::SkeletonReset,
            train_loss,
        )?);
    }
    Ok(rows)
}

/// One epoch-0 row: the test loss and accuracy of the model `start` names (the model as
/// given, or the skeleton-reset start of `cfg`'s optimizer), and its training loss when
/// `train_loss` (else NaN, written as null). The data is checked against the model first.
pub fn start_row(
    graph: &Graph,
    split: &Split,
    cfg: &TrainConfig,
    start: Start,
    train_loss: bool,
) -> Result<EpochMetrics> {
    let tg = logits_graph(graph);
    check_data(&tg, split)?;
    let g = match start {
        Start::Given => tg,
        Start::SkeletonReset => optimizer_for(&tg, cfg)?.0,
    };
    let ex = Executor::new(&g)?;
    let (test_loss, test_accuracy) = evaluate(&ex, &g, &split.test, 512)?;
    let train_loss = match train_loss {
        true => evaluate(&ex, &g, &split.train, 512)?.0,
        false => f64::NAN,
    };
    Ok(EpochMetrics {
        optimizer: cfg.optimizer,
        epoch: 0,
        lr: cfg.lr,
        train_loss,
        test_loss,
        test_accuracy,
        seconds: 0.0,
        guarded_steps: 0,
        machine: crate::exec::cpu::machine(),
        build: crate::BUILD.to_string(),
        start: Some(start),
    })
}

/// The graph to train: a trailing Softmax or LogSoftmax is dropped so the output is logits.
pub fn logits_graph(g: &Graph) -> Graph {
    let mut t = g.clone();
    if t.outputs.len() == 1 {
        if let Some(last) = t.nodes.last() {
            if matches!(last.op, Op::Softmax { .. } | Op::LogSoftmax { .. })
                && last.outputs[0] == t.outputs[0].name
            {
                let logits = last.inputs[0].clone();
                t.nodes.pop();
                t.outputs[0].name = logits;
            }
        }
    }
    t
}

/// Mean cross-entropy of logits (N, C) against labels (N).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    Ok((picked.mean_all()? * -1.0)?)
}

/// The samples `idx` as a batch; with `augment`, augmented with that seed.
fn batch_tensors(
    ds: &Dataset,
    idx: &[usize],
    input_dims: &[usize],
    dev: &Device,
    augment: Option<u64>,
) -> Result<(Tensor, Tensor)> {
    let f = ds.features();
    let mut x = Vec::with_capacity(idx.len() * f);
    for &i in idx {
        x.extend_from_slice(&ds.x[i * f..(i + 1) * f]);
    }
    if let Some(seed) = augment {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xA5A5_5A5A_0F0F_F0F0);
        crate::data::augment(&mut x, &ds.dims, &ds.black, &mut rng);
    }
    let mut dims = vec![idx.len()];
    dims.extend_from_slice(input_dims);
    let y: Vec<u32> = idx.iter().map(|&i| ds.y[i]).collect();
    Ok((
        Tensor::from_vec(x, dims, dev)?,
        Tensor::from_vec(y, idx.len(), dev)?,
    ))
}

/// The model's per-sample input dims, checked against the data.
fn input_dims(g: &Graph, ds: &Dataset) -> Result<Vec<usize>> {
    if g.inputs.len() != 1 || g.outputs.len() != 1 {
        return Err(Error::unsupported(
            "training needs a model with one input and one output",
        ));
    }
    let s = &g.shapes[&g.inputs[0].name];
    if s.batch != Some(0) {
        return Err(Error::unsupported(format!(
            "input shape {s} has no leading batch axis"
        )));
    }
    let dims = s.dims[1..].to_vec();
    if dims.iter().product::<usize>() != ds.features() {
        return Err(Error::usage(format!(
            "the model's input {s} takes {} features per sample, the data has {} ({:?}){}",
            dims.iter().product::<usize>(),
            ds.features(),
            ds.dims,
            if dims.len() == ds.dims.len() && dims.len() > 1 {
                let d: Vec<String> = ds.dims.iter().map(|d| d.to_string()).collect();
                format!(
                    "; a model whose layers do not depend on the image size can take it with --input-shape {}=1x{}",
                    g.inputs[0].name,
                    d.join("x")
                )
            } else {
                String::new()
            }
        )));
    }
    Ok(dims)
}

/// The data must fit the (logits) model before anything runs: neither split empty, the
/// model's input takes a sample's features, every label is one of its classes. Returns the
/// per-sample input dims.
fn check_data(tg: &Graph, split: &Split) -> Result<Vec<usize>> {
    if split.train.is_empty() || split.test.is_empty() {
        return Err(Error::usage(format!(
            "data '{}': the {} split is empty ({} training, {} test samples)",
            split.name,
            if split.train.is_empty() {
                "training"
            } else {
                "test"
            },
            split.train.len(),
            split.test.len()
        )));
    }
    let dims = input_dims(tg, &split.train)?;
    check_labels(tg, split)?;
    Ok(dims)
}

/// Every label must be a class the model outputs: a label past the last one would fail deep
/// in the loss with no word of the data.
fn check_labels(g: &Graph, split: &Split) -> Result<()> {
    let classes = classes(g);
    for (part, ds) in [("training", &split.train), ("test", &split.test)] {
        if let Some((i, &y)) =
            ds.y.iter()
                .enumerate()
                .find(|(_, &y)| y as usize >= classes)
        {
            return Err(Error::data(format!(
                "data '{}': sample {i} of the {part} split has label {y}, but the model has {classes} classes",
                split.name
            )));
        }
    }
    Ok(())
}

/// Loss and accuracy of a (logits) model on a data set.
pub fn evaluate(ex: &Executor, g: &Graph, ds: &Dataset, batch: usize) -> Result<(f64, f64)> {
    let dims = input_dims(g, ds)?;
    let (mut loss, mut correct) = (0f64, 0usize);
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = batch_tensors(ds, chunk, &dims, ex.device(), None)?;
        let out = &ex.forward(&[x])?[0];
        let logits = out.flatten_from(1)?;
        loss += cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        let pred = logits.argmax(1)?.to_vec1::<u32>()?;
        correct += pred
            .iter()
            .zip(y.to_vec1::<u32>()?)
            .filter(|(a, b)| **a == *b)
            .count();
    }
    Ok((
        loss / ds.len().max(1) as f64,
        correct as f64 / ds.len().max(1) as f64,
    ))
}

/// The model to start from and the optimizer, for a (logits) training graph. EC-SGD trains
/// the canonical model (or the fresh model with skeleton weights at ±1); its blocks'
/// parameters move by update programs, the others by SGD.
pub fn optimizer_for(tg: &Graph, cfg: &TrainConfig) -> Result<(Graph, Box<dyn Optimizer>)> {
    let trainable = tg.trainable_params();
    let no_decay = tg.metadata_names(crate::ir::META_NO_DECAY);
    let sgd = |names: HashSet<String>| {
        Sgd::new(names, cfg.momentum, cfg.weight_decay).without_decay(no_decay.clone())
    };
    Ok(match cfg.optimizer {
        OptimizerKind::PathSgd => (
            tg.clone(),
            Box::new(PathSgd::new(tg, sgd(trainable))?) as Box<dyn Optimizer>,
        ),
        OptimizerKind::Sgd => (tg.clone(), Box::new(sgd(trainable)) as Box<dyn Optimizer>),
        OptimizerKind::SgdEcInit => {
            let ec = TrainConfig {
                optimizer: OptimizerKind::EcSgd,
                ..cfg.clone()
            };
            let (start, _) = optimizer_for(tg, &ec)?;
            (start, Box::new(sgd(trainable)) as Box<dyn Optimizer>)
        }
        OptimizerKind::EcSgd => {
            let crate::ec::Conversion { basis, canon, .. } = crate::ec::convert(tg);
            let start = if cfg.skeleton_init {
                skeleton_reset(tg, &basis)
            } else {
                canon
            };
            let block: HashSet<String> = basis.block_params();
            let rest = sgd(trainable.difference(&block).cloned().collect());
            (start, Box::new(ec_sgd(&basis, rest, cfg)?))
        }
        OptimizerKind::GsgdRef => {
            if !cfg.skeleton_init {
                return Err(Error::usage(
                    "gsgd-ref starts as the reference does, from skeleton weights at +1: \
                     --keep-function does not apply (its blocks run through BatchNormalization, \
                     so no canonical form keeps the function)",
                ));
            }
            // The reference's `red_init` (1): every skeleton weight +1, whatever its sign.
            let basis = crate::ec::reference::basis(tg);
            let start = reset_skeleton(tg, &basis, |_| 1.0);
            let block: HashSet<String> = basis.block_params();
            let rest = sgd(trainable.difference(&block).cloned().collect());
            (start, Box::new(ec_sgd(&basis, rest, cfg)?))
        }
        OptimizerKind::BalancedSgd => {
            let crate::ec::Conversion {
                basis, analysis, ..
            } = crate::ec::convert(tg);
            let mut start = if cfg.skeleton_init {
                skeleton_reset(tg, &basis)
            } else {
                tg.clone()
            };
            let plan = crate::ec::balance::Balance::new(&start, &analysis)?;
            plan.balance(&mut start, BALANCE_TOL, BALANCE_MAX);
            let opt = BalancedSgd::new(plan, trainable, cfg.momentum, cfg.weight_decay);
            (start, Box::new(opt))
        }
    })
}

/// EC-SGD's update programs on `basis`, `rest` taking SGD steps.
fn ec_sgd(basis: &crate::ec::Basis, rest: Sgd, cfg: &TrainConfig) -> Result<EcSgd> {
    let step = StepConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        r_floor: 0.1,
    };
    Ok(EcSgd::new(ProgramRunner::new(basis)?, rest, step))
}

/// Balanced SGD's start is balanced until no group's coordinate step ¼|ln(O/I)| exceeds
/// this, or for at most `BALANCE_MAX` iterations.
pub const BALANCE_TOL: f64 = 1e-6;
pub const BALANCE_MAX: usize = 20_000;

/// The reference's initialization: every skeleton weight of the fresh model set to ±1
/// (fixed ones and V alike; the sign kept), the other weights as initialized; another
/// function.
fn skeleton_reset(tg: &Graph, basis: &crate::ec::Basis) -> Graph {
    reset_skeleton(tg, basis, |x| if x < 0.0 { -1.0 } else { 1.0 })
}

/// `tg` with every skeleton scalar of `basis` (fixed ones and V alike) replaced by `to`
/// of its value.
fn reset_skeleton(tg: &Graph, basis: &crate::ec::Basis, to: impl Fn(f32) -> f32) -> Graph {
    let mut fresh = tg.clone();
    for t in basis.blocks.iter().flat_map(|b| b.tensors()) {
        let w = fresh.params.get_mut(&t.param).expect("block tensor");
        if let crate::ir::TensorData::F32(v) = &mut w.data {
            for &i in &t.fixed {
                v[i] = to(v[i]);
            }
        }
    }
    fresh
}

/// Train `graph` on `split`. Returns the trained model (with its original output, a
/// trailing Softmax kept) and the metrics of every epoch. `on_epoch` sees each epoch.
pub fn train(
    graph: &Graph,
    split: &Split,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochMetrics),
) -> Result<(Graph, Vec<EpochMetrics>)> {
    train_with(
        graph,
        split,
        cfg,
        Hooks {
            on_epoch: Box::new(on_epoch),
            on_step: Box::new(|_| {}),
            stop: None,
        },
    )
}

/// One training step, for progress displays.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    pub samples: usize,
    pub samples_total: usize,
    /// Loss of this step's batch.
    pub loss: f64,
    /// Accuracy on the training samples of this epoch so far.
    pub accuracy: f64,
}

/// What a caller can see and do during training.
pub struct Hooks<'a> {
    pub on_epoch: Box<dyn FnMut(&EpochMetrics) + 'a>,
    pub on_step: Box<dyn FnMut(&StepInfo) + 'a>,
    /// When set (by a Ctrl-C handler, say), training stops after the current step, writes
    /// the checkpoint (if one is configured) and returns `ErrorKind::Interrupted`.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

/// The training options that must hold before any work (`ecc train`, `ecc experiment`):
/// a usage error naming the option otherwise.
pub fn check_options(
    epochs: usize,
    batch: usize,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<()> {
    let bad = |what: String| Err(Error::usage(what));
    if epochs == 0 {
        return bad("--epochs must be at least 1".into());
    }
    if batch == 0 {
        return bad("--batch must be at least 1".into());
    }
    if !(lr.is_finite() && lr > 0.0) {
        return bad(format!("--lr must be a positive number, not {lr}"));
    }
    if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
        return bad(format!("--momentum must be in [0, 1), not {momentum}"));
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return bad(format!(
            "--weight-decay must be a number >= 0, not {weight_decay}"
        ));
    }
    Ok(())
}

/// What one training step did.
#[derive(Debug, Clone)]
pub struct StepOut {
    /// The batch's mean loss before the update.
    pub loss: f64,
    /// The predicted class of every sample (empty when the loss was not finite).
    pub pred: Vec<u32>,
    /// The optimizer's R guard engaged (EC-SGD).
    pub guarded: bool,
    /// Milliseconds: the whole step, forward with the loss, backward, the update.
    pub ms: [f64; 4],
}

/// One training step, the same for `ecc train`, `ecc experiment` and `ecc bench`: forward in
/// training mode (`seed` draws Dropout's masks), cross-entropy against `y`, backward, and the
/// optimizer's update at `lr`. A non-finite loss leaves the weights as they were.
pub fn step(
    ex: &Executor,
    opt: &mut dyn Optimizer,
    x: &Tensor,
    y: &Tensor,
    seed: u64,
    lr: f64,
) -> Result<StepOut> {
    let t0 = Instant::now();
    // The executor's tape runs the network's backward pass (exec::tape); candle's autograd
    // runs the loss's, from a variable standing for the network's output.
    let (outs, tape) = ex.forward_tape(std::slice::from_ref(x), seed)?;
    let out = Var::from_tensor(&outs[0])?;
    let logits = out.flatten_from(1)?;
    let loss = cross_entropy(&logits, y)?;
    let t1 = Instant::now();
    let l = loss.to_scalar::<f32>()? as f64;
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    if !l.is_finite() {
        let f = ms(t0, t1);
        return Ok(StepOut {
            loss: l,
            pred: vec![],
            guarded: false,
            ms: [f, f, 0.0, 0.0],
        });
    }
    let mut douts = vec![None; outs.len()];
    douts[0] = loss.backward()?.remove(out.as_tensor());
    let g = tape.backward(ex, &douts)?;
    let t2 = Instant::now();
    let guarded = opt.step(ex.params(), &g, lr)? > 0;
    wake_pool();
    let t3 = Instant::now();
    Ok(StepOut {
        loss: l,
        pred: logits.argmax(1)?.to_vec1::<u32>()?,
        guarded,
        ms: [ms(t0, t3), ms(t0, t1), ms(t1, t2), ms(t2, t3)],
    })
}

/// Hand the thread pool an empty job, which wakes a sleeping thread, so that it is up when
/// the next step's first parallel kernel starts: an optimizer whose update ends with
/// single-threaded work (small tensors) otherwise lets the other thread fall asleep, and the
/// next forward pass waits for it to wake.
fn wake_pool() {
    rayon::spawn(|| ());
}

/// A warning for `--keep-function` with EC-SGD, when the model's free skeleton values V are
/// small: EC-SGD's step on a weight scales as lr / V² (spec §5, §13), and V (a class
/// invariant) is tiny in trained networks, so say so before a long run diverges.
pub fn v_scale_note(g: &Graph, lr: f64) -> Option<String> {
    let tg = logits_graph(g);
    let r = crate::ec::convert(&tg).report("", &tg);
    let med = r.blocks.iter().map(|b| b.v_abs[1]).reduce(f64::min)?;
    (med < 1e-2).then(|| {
        format!(
            "from the canonical form, |V| has median {med:.1e}: EC-SGD's steps scale as lr/V², \
             so lr {lr} acts like {:.1e}; lr around {:.0e} times your usual one may be needed",
            lr / (med * med),
            med * med
        )
    })
}

/// Path-SGD's scale on a model (spec §7): γ of its weights and of its biases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathScale {
    /// The 10th, 50th and 90th percentiles of γ over the scalars of the weights (tensors
    /// of rank 2 and more).
    pub weights: [f64; 3],
    /// The least and the largest γ of a bias scalar (rank-1 tensors; none without biases).
    /// A bias's paths start at it, so its γ lacks the factors of the layers before it:
    /// the classifier's bias has γ = 1 whatever the depth.
    pub biases: Option<[f64; 2]>,
}

/// Path-SGD's scale on `g`. It moves a parameter by lr·g/γ, so at lr η it steps like SGD at
/// η/γ; γ is a product of squared weights along paths, so it scales with the
/// initialization as c^(2(L−1)) for L layers: on a deep net the weights' γ sits orders of
/// magnitude away from 1, while a late bias's stays near it (docs/results.md, the He probe).
pub fn path_sgd_gamma(g: &Graph) -> Result<Option<PathScale>> {
    let tg = logits_graph(g);
    let ex = Executor::new(&tg)?;
    let opt = PathSgd::new(&tg, Sgd::new(HashSet::new(), 0.0, 0.0))?;
    let (mut weights, mut biases): (Vec<f32>, Vec<f32>) = (vec![], vec![]);
    // γ has its parameter's shape: rank 1 for a bias.
    for y in opt.gamma(ex.params())?.values() {
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        match y.rank() {
            0 | 1 => biases.extend(v),
            _ => weights.extend(v),
        }
    }
    if weights.is_empty() {
        return Ok(None);
    }
    weights.sort_by(f32::total_cmp);
    let at = |q: f64| weights[((weights.len() - 1) as f64 * q).round() as usize] as f64;
    let range = |v: &[f32]| {
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        [lo as f64, hi as f64]
    };
    Ok(Some(PathScale {
        weights: [at(0.1), at(0.5), at(0.9)],
        biases: (!biases.is_empty()).then(|| range(&biases)),
    }))
}

/// A note for Path-SGD when its weights' γ is far from 1 (median outside [0.1, 10]): lr η
/// then acts like SGD's η/γ, so the learning rate that suits SGD is far from the one that
/// suits it; and the biases' γ, when the least of them is 100 times below that median (a
/// rate scaled for the weights then takes far larger steps on those biases).
pub fn path_sgd_note(g: &Graph, lr: f64) -> Result<Option<String>> {
    let Some(PathScale { weights, biases }) = path_sgd_gamma(g)? else {
        return Ok(None);
    };
    let [lo, med, hi] = weights;
    if (0.1..=10.0).contains(&med) {
        return Ok(None);
    }
    let mut note = format!(
        "Path-SGD divides each weight's gradient by γ (spec §7), here median {med:.1e} \
         (10-90%: {lo:.1e} to {hi:.1e}): lr {lr} steps like SGD at lr {:.1e}. SGD's lr times \
         {med:.0e} gives the median weight SGD's step",
        lr / med
    );
    match biases {
        Some([b, bh]) if b * 100.0 < med => {
            note += &format!(
                "; the biases' γ is {b:.1e} to {bh:.1e}, so lr {lr} moves the bias of least γ \
             like SGD at lr {:.1e}: a rate scaled for the weights is far too large for it \
             (docs/results.md, the He probe)",
                lr / b
            )
        }
        _ => note += " (docs/results.md, the He probe)",
    }
    Ok(Some(note))
}

/// The error of a step whose loss became `l`: names the learning rate (and the weight
/// decay, when there is one) that most likely caused it.
fn diverged(l: f64, epoch: usize, lr: f64, weight_decay: f64) -> Error {
    let num = |v: f64| {
        if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
            format!("{v:e}")
        } else {
            v.to_string()
        }
    };
    let cause = if weight_decay > 0.0 {
        format!(
            "learning rate {} or weight decay {}",
            num(lr),
            num(weight_decay)
        )
    } else {
        format!("learning rate {}", num(lr))
    };
    Error::new(crate::error::ErrorKind::Diverged(format!(
        "the loss became {l} in epoch {} ({cause} too large?): training stopped",
        epoch + 1
    )))
}

/// [`train`] with hooks for progress and interruption.
pub fn train_with(
    graph: &Graph,
    split: &Split,
    cfg: &TrainConfig,
    mut hooks: Hooks,
) -> Result<(Graph, Vec<EpochMetrics>)> {
    let tg = logits_graph(graph);
    let dims = check_data(&tg, split)?;
    let (start, mut opt) = optimizer_for(&tg, cfg)?;
    let ex = Executor::new(&start)?;
    let mut at = Progress::default();
    if let (true, Some(path)) = (cfg.resume, &cfg.checkpoint) {
        if path.is_file() {
            at = load_checkpoint(path, &ex, opt.as_mut(), cfg, split)?;
        }
    }
    let (first, skip) = (at.epoch, at.step);
    let mut history = vec![];
    let mut guarded_steps = at.guarded;
    for epoch in first..cfg.epochs {
        let t0 = Instant::now();
        let lr = cfg.schedule.lr(cfg.lr, epoch, cfg.epochs);
        let order = epoch_order(split.train.len(), cfg.seed, epoch);
        // A resumed epoch goes on with the sums of the steps it had done.
        let (mut total, mut seen, mut hits) = if epoch == first && skip > 0 {
            (at.total, at.seen, at.hits)
        } else {
            (0f64, 0usize, 0usize)
        };
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch.max(1)).collect();
        for (s, chunk) in chunks.iter().enumerate() {
            if epoch == first && s < skip {
                continue;
            }
            let seed = step_seed(cfg.seed, epoch, s);
            let aug = cfg.augment.then_some(seed);
            let (x, y) = batch_tensors(&split.train, chunk, &dims, ex.device(), aug)?;
            let out = step(&ex, opt.as_mut(), &x, &y, seed, lr)?;
            let l = out.loss;
            hits += out
                .pred
                .iter()
                .zip(chunk.iter())
                .filter(|(p, &i)| **p == split.train.y[i])
                .count();
            if !l.is_finite() {
                return Err(diverged(l, epoch, lr, cfg.weight_decay));
            }
            total += l * chunk.len() as f64;
            seen += chunk.len();
            guarded_steps += out.guarded as usize;
            (hooks.on_step)(&StepInfo {
                epoch: epoch + 1,
                step: s + 1,
                steps: chunks.len(),
                samples: (s * cfg.batch.max(1) + chunk.len()).min(order.len()),
                samples_total: order.len(),
                loss: l,
                accuracy: hits as f64 / seen.max(1) as f64,
            });
            if hooks
                .stop
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
            {
                let msg = match &cfg.checkpoint {
                    Some(path) => {
                        let here = Progress {
                            epoch,
                            step: s + 1,
                            total,
                            seen,
                            hits,
                            guarded: guarded_steps,
                        };
                        save_checkpoint(path, &ex, opt.as_ref(), cfg, split, here)?;
                        format!("stopped after step {} of epoch {}; checkpoint in {} (--resume continues)", s + 1, epoch + 1, path.display())
                    }
                    None => format!(
                        "stopped after step {} of epoch {} (no --checkpoint, nothing saved)",
                        s + 1,
                        epoch + 1
                    ),
                };
                return Err(Error::new(crate::error::ErrorKind::Interrupted(msg)));
            }
        }
        let (test_loss, test_accuracy) = evaluate(&ex, &tg, &split.test, 512)?;
        // The last step of the epoch may have made the weights non-finite: stop before the
        // checkpoint, which keeps the last good state.
        if !test_loss.is_finite() {
            return Err(Error::new(crate::error::ErrorKind::Diverged(format!(
                "the test loss became {test_loss} after epoch {}: training stopped{}",
                epoch + 1,
                if cfg.checkpoint.is_some() {
                    "; the checkpoint keeps the epoch before"
                } else {
                    ""
                }
            ))));
        }
        let m = EpochMetrics {
            optimizer: cfg.optimizer,
            epoch: epoch + 1,
            lr,
            train_loss: total / seen.max(1) as f64,
            test_loss,
            test_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
            guarded_steps,
            machine: crate::exec::cpu::machine(),
            build: crate::BUILD.to_string(),
            start: None,
        };
        // The metrics line first, then the checkpoint (see `metrics_upto`).
        (hooks.on_epoch)(&m);
        if let Some(path) = &cfg.checkpoint {
            let done = Progress {
                epoch: epoch + 1,
                guarded: guarded_steps,
                ..Progress::default()
            };
            save_checkpoint(path, &ex, opt.as_ref(), cfg, split, done)?;
        }
        history.push(m);
    }
    let mut out = graph.clone();
    ex.write_back(&mut out)?;
    Ok((out, history))
}
