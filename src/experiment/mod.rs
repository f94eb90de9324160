//! `ecc experiment`: run every (optimizer, seed) of an experiment description, writing each
//! run's metrics as JSON lines and a checkpoint, so that an interrupted experiment resumes
//! where it stopped and finished runs are skipped.
//!
//! The description is JSON:
//! `{"name": "reference-mlp", "model": "mlp:784-64-64-64-64-10", "bias": false,
//!   "data": "mnist", "optimizers": ["sgd", "ec-sgd", "path-sgd"], "seeds": [0, 1, 2],
//!   "epochs": 50, "batch": 64, "lr": 0.1, "schedule": "exp:0.01", "momentum": 0.0,
//!   "weight_decay": 0.0}`.
//! `model` is a spec of `ecc new` (initialized with the run's seed) or an .onnx path, or a
//! list of them (a sweep); `data` is digits, mnist, fashion-mnist (from the cache of
//! scripts/fetch-data.sh), `mnist:DIR` / `fashion-mnist:DIR` or `cifar10:DIR`; `lr` is one
//! number or one per optimizer (`{"sgd": 0.01, "ec-sgd": 1e-15}`); `"keep_function": true`
//! starts EC-SGD from the canonical form. [`Experiment::on_data`] runs a description on
//! another data set (`ecc experiment --data cifar10:DIR`). `report` turns the metrics into
//! tables, plots and document blocks.

mod report;

pub use report::{
    charts, load_metrics, mean_std, summary, update_doc, write_plots, Row, RunMetrics,
};

use crate::error::{Error, ErrorKind, Result};
use crate::train::{EpochMetrics, OptimizerKind, Schedule, TrainConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    /// One model, or a list of models (a sweep: each gets its own folder and table row).
    pub model: Models,
    #[serde(default = "yes")]
    pub bias: bool,
    pub data: String,
    pub optimizers: Vec<OptimizerKind>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch: usize,
    /// One learning rate, or one per optimizer: `{"sgd": 0.01, "ec-sgd": 1e-15}`.
    pub lr: Lr,
    #[serde(default = "constant")]
    pub schedule: String,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Start from the model's function: EC-SGD from its canonical form (spec §4) instead of
    /// the skeleton-±1 initialization. For fine-tuning a trained model. Each run then also
    /// records an epoch-0 row: the starting model's loss and accuracy before any step (train
    /// loss over the whole training set).
    #[serde(default)]
    pub keep_function: bool,
    /// Augment the training images (`ecc train --augment`).
    #[serde(default)]
    pub augment: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Lr {
    One(f64),
    PerOptimizer(std::collections::BTreeMap<OptimizerKind, f64>),
}

impl Lr {
    pub fn of(&self, o: OptimizerKind) -> Result<f64> {
        match self {
            Lr::One(v) => Ok(*v),
            Lr::PerOptimizer(m) => m.get(&o).copied().ok_or_else(|| {
                Error::usage(format!("experiment: no learning rate for {}", o.name()))
            }),
        }
    }
}

/// `"model": "mlp:..."` or `"model": ["mlp:...", "mlp:..."]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Models {
    One(String),
    Many(Vec<String>),
}

impl Models {
    pub fn list(&self) -> Vec<&str> {
        match self {
            Models::One(m) => vec![m.as_str()],
            Models::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

fn yes() -> bool {
    true
}

fn constant() -> String {
    "constant".into()
}

/// One finished or resumed run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub model: String,
    pub optimizer: OptimizerKind,
    pub seed: u64,
    /// Epochs trained now (0 when the run was already complete).
    pub trained: usize,
    pub metrics: PathBuf,
    /// Why the run stopped early, when its loss became non-finite.
    pub diverged: Option<String>,
    /// Another process held the run's lock: it is training the run, this one skipped it.
    pub busy: bool,
}

impl Experiment {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(path))?;
        let exp: Experiment = serde_json::from_str(&text)
            .map_err(|e| Error::usage(format!("experiment description: {e}")).in_file(path))?;
        exp.check().map_err(|e| e.in_file(path))?;
        Ok(exp)
    }

    /// What must hold before any run starts: a name that is one plain folder name (runs go
    /// to `out/<name>/`), at least one optimizer and seed, and training options that work.
    pub fn check(&self) -> Result<()> {
        let safe = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !safe {
            return Err(Error::usage(format!(
                "experiment name '{}': use letters, digits, '.', '_' and '-' (it names a folder under --out)",
                self.name
            )));
        }
        if self.optimizers.is_empty() || self.seeds.is_empty() {
            return Err(Error::usage(
                "experiment: \"optimizers\" and \"seeds\" need at least one entry each",
            ));
        }
        for &o in &self.optimizers {
            crate::train::check_options(
                self.epochs,
                self.batch,
                self.lr.of(o)?,
                self.momentum,
                self.weight_decay,
            )
            .map_err(|e| Error::usage(format!("experiment ({}): {}", o.name(), e.kind)))?;
        }
        Ok(())
    }

    /// The description run on another data set (`ecc experiment --data`), unchanged
    /// otherwise: `data` is `spec`, every model of `ecc new` takes that data's input shape
    /// ([`crate::zoo::Spec::with_input`]: `plain:1x28x28-n3` becomes `plain:3x32x32-n3` on
    /// CIFAR-10) and, when the kind of data changes, the name gets the kind as a suffix
    /// (`bn-compare` becomes `bn-compare-cifar10`), so that its runs have their own folder.
    /// ONNX models are kept as they are: they must fit the data.
    pub fn on_data(mut self, spec: &str) -> Result<Experiment> {
        let dims = crate::data::sample_dims(spec)?;
        let kind = crate::data::kind(spec);
        if kind != crate::data::kind(&self.data) {
            let models = self.model.list().into_iter().map(|m| {
                if crate::zoo::Spec::is_spec(m) {
                    crate::zoo::Spec::with_input(m, &dims)
                        .map_err(|e| Error::usage(format!("--data {spec}: {}", e.kind)))
                } else {
                    Ok(m.to_string())
                }
            });
            let models = models.collect::<Result<Vec<_>>>()?;
            self.model = match self.model {
                Models::One(_) => Models::One(models[0].clone()),
                Models::Many(_) => Models::Many(models),
            };
            self.name = format!("{}-{kind}", self.name);
        }
        self.data = spec.to_string();
        Ok(self)
    }

    fn data_spec(&self) -> String {
        match self.data.as_str() {
            "mnist" | "fashion-mnist" => format!(
                "{}:{}",
                self.data,
                crate::data_dir().join(&self.data).display()
            ),
            other => other.to_string(),
        }
    }

    fn model(&self, model: &str, seed: u64) -> Result<crate::ir::Graph> {
        if crate::zoo::Spec::is_spec(model) {
            crate::zoo::build(&crate::zoo::Spec::parse(model)?, seed, self.bias)
        } else {
            crate::import::load_file(Path::new(model), &Default::default())
        }
    }

    /// The folder of one model's runs: `out/<name>/` for a single model, and
    /// `out/<name>/<model label>/` in a sweep.
    pub fn run_dir(&self, out: &Path, model: &str) -> PathBuf {
        let dir = out.join(&self.name);
        match &self.model {
            Models::One(_) => dir,
            Models::Many(_) => dir.join(label(model)),
        }
    }

    /// A file of one run: `<run_dir>/<optimizer>-seed<k>.<ext>` (metrics: jsonl, checkpoint:
    /// safetensors).
    pub fn run_file(
        &self,
        out: &Path,
        model: &str,
        optimizer: OptimizerKind,
        seed: u64,
        ext: &str,
    ) -> PathBuf {
        self.run_dir(out, model)
            .join(format!("{}-seed{seed}.{ext}", optimizer.name()))
    }

    /// Every (model, optimizer, seed) run, in the order they are trained: seed by seed, so
    /// that an experiment stopped midway holds complete comparisons at fewer seeds.
    pub fn runs(&self) -> Vec<(&str, OptimizerKind, u64)> {
        let mut v = vec![];
        for &s in &self.seeds {
            for m in self.model.list() {
                for &o in &self.optimizers {
                    v.push((m, o, s));
                }
            }
        }
        v
    }
}

/// A file-name-safe label of a model spec or path: `mlp:784-32-32-10` -> `mlp-784-32-32-10`.
pub fn label(model: &str) -> String {
    let base = Path::new(model)
        .file_stem()
        .filter(|_| model.ends_with(".onnx"))
        .map_or(model.to_string(), |s| s.to_string_lossy().into_owned());
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Run (or resume) every run of `exp` under `out/<name>/`.
/// `stop` (set by a Ctrl-C handler) stops the current run after its current step, with its
/// checkpoint written, as `ecc train` does; the next call resumes it.
pub fn run(
    exp: &Experiment,
    out: &Path,
    stop: Option<&std::sync::atomic::AtomicBool>,
    mut on_epoch: impl FnMut(&str, &EpochMetrics),
) -> Result<Vec<RunOutcome>> {
    let split = crate::data::load(&exp.data_spec())?;
    let schedule = Schedule::parse(&exp.schedule)?;
    let mut outcomes = vec![];
    for (model, optimizer, seed) in exp.runs() {
        let dir = exp.run_dir(out, model);
        crate::files::create_dir(&dir)?;
        let mut run = format!("{}-seed{seed}", optimizer.name());
        if let Models::Many(_) = exp.model {
            run = format!("{}/{run}", label(model));
        }
        let metrics = exp.run_file(out, model, optimizer, seed, "jsonl");
        let checkpoint = exp.run_file(out, model, optimizer, seed, "safetensors");
        let outcome = |trained, diverged, busy| RunOutcome {
            model: model.to_string(),
            optimizer,
            seed,
            trained,
            metrics: metrics.clone(),
            diverged,
            busy,
        };
        let finished = || {
            let kept = crate::train::metrics_upto(&metrics, exp.epochs);
            let done = kept.iter().filter(|l| !is_start_row(l)).count();
            let diverged = kept.iter().find_map(|l| diverged_message(l));
            (done >= exp.epochs || diverged.is_some()).then_some(diverged)
        };
        if let Some(diverged) = finished() {
            outcomes.push(outcome(0, diverged, false));
            continue;
        }
        // One process per run: several `ecc experiment` processes on one description share
        // its runs. The lock is the OS's (released when the process ends, even by a kill);
        // the file stays, as deleting it would let two processes lock two different files.
        let Some(_lock) = lock_run(&exp.run_file(out, model, optimizer, seed, "lock"))? else {
            outcomes.push(outcome(0, None, true));
            continue;
        };
        // Another process may have finished the run between the check and the lock.
        if let Some(diverged) = finished() {
            outcomes.push(outcome(0, diverged, false));
            continue;
        }
        // Resume from the checkpoint: keep the metrics of the epochs it holds.
        let resumed = crate::train::checkpoint_epoch(&checkpoint)?;
        let mut lines = crate::train::metrics_upto(&metrics, resumed);
        let cfg = TrainConfig {
            optimizer,
            epochs: exp.epochs,
            batch: exp.batch,
            lr: exp.lr.of(optimizer)?,
            schedule,
            momentum: exp.momentum,
            weight_decay: exp.weight_decay,
            seed,
            skeleton_init: !exp.keep_function,
            checkpoint: Some(checkpoint.clone()),
            resume: true,
            augment: exp.augment,
        };
        let graph = exp.model(model, seed)?;
        if exp.keep_function && !lines.iter().any(|l| is_start_row(l)) {
            lines.insert(0, start_row(&graph, &split, &cfg)?);
        }
        let write = |lines: &[String]| -> Result<()> {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            crate::files::write_bytes(&metrics, text.as_bytes())
        };
        write(&lines)?;
        let mut trained = 0;
        let mut failure = None;
        let hooks = crate::train::Hooks {
            on_epoch: Box::new(|m| {
                lines.push(serde_json::to_string(m).unwrap_or_default());
                if let Err(e) = write(&lines) {
                    failure.get_or_insert(e);
                }
                trained += 1;
                on_epoch(&run, m);
            }),
            on_step: Box::new(|_| {}),
            stop,
        };
        let result = crate::train::train_with(&graph, &split, &cfg, hooks);
        if let Some(e) = failure {
            return Err(e);
        }
        // A run that diverges is a result, not a failure of the experiment: record where
        // and why, and go on with the next run.
        let mut diverged = None;
        match result {
            Ok(_) => {}
            Err(Error {
                kind: ErrorKind::Diverged(msg),
                ..
            }) => {
                let epoch = resumed + trained + 1;
                lines.push(serde_json::json!({ "epoch": epoch, "diverged": msg }).to_string());
                write(&lines)?;
                diverged = Some(msg);
            }
            Err(e) => return Err(e),
        }
        outcomes.push(outcome(trained, diverged, false));
    }
    Ok(outcomes)
}

/// Take the lock of one run (`<run>.lock`), or `None` when another process holds it.
fn lock_run(path: &Path) -> Result<Option<std::fs::File>> {
    let io = report::io_err(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(&io)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The message of a metrics line that records a divergence.
fn diverged_message(line: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["diverged"].as_str().map(String::from))
}

fn is_start_row(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["epoch"].as_u64())
        == Some(0)
}

/// The epoch-0 metrics line: the model as the optimizer starts from it (for EC-SGD with
/// `keep_function`, the model's own function), before any step.
fn start_row(
    graph: &crate::ir::Graph,
    split: &crate::data::Split,
    cfg: &TrainConfig,
) -> Result<String> {
    let rows = crate::train::start_metrics(graph, split, cfg, true)?;
    let m = rows.last().expect("the given model's row");
    Ok(serde_json::to_string(m).unwrap_or_default())
}
