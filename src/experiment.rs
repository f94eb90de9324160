//! `ecc experiment`: run every (optimizer, seed) of an experiment description, writing each
//! run's metrics as JSON lines and a checkpoint, so that an interrupted experiment resumes
//! where it stopped and finished runs are skipped.
//!
//! The description is JSON:
//! `{"name": "reference-mlp", "model": "mlp:784-64-64-64-64-10", "bias": false,
//!   "data": "mnist", "optimizers": ["sgd", "ec-sgd", "path-sgd"], "seeds": [0, 1, 2],
//!   "epochs": 50, "batch": 64, "lr": 0.1, "schedule": "exp:0.01", "momentum": 0.0,
//!   "weight_decay": 0.0}`.
//! `model` is a spec of `ecc new` (initialized with the run's seed) or an .onnx path;
//! `data` is digits, mnist, fashion-mnist (from the cache of scripts/fetch-data.sh) or
//! `mnist:DIR` / `fashion-mnist:DIR`.

use crate::error::{Error, ErrorKind, Result};
use crate::train::{train, EpochMetrics, OptimizerKind, Schedule, TrainConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    pub model: String,
    #[serde(default = "yes")]
    pub bias: bool,
    pub data: String,
    pub optimizers: Vec<OptimizerKind>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    #[serde(default = "constant")]
    pub schedule: String,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
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
    pub optimizer: OptimizerKind,
    pub seed: u64,
    /// Epochs trained now (0 when the run was already complete).
    pub trained: usize,
    pub metrics: PathBuf,
}

impl Experiment {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(path))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::usage(format!("experiment description: {e}")).in_file(path))
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

    fn model(&self, seed: u64) -> Result<crate::ir::Graph> {
        if self.model.starts_with("mlp:") || self.model.starts_with("cnn:") {
            crate::zoo::build(&crate::zoo::Spec::parse(&self.model)?, seed, self.bias)
        } else {
            crate::import::load_file(Path::new(&self.model), &Default::default())
        }
    }
}

fn optimizer_name(k: OptimizerKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Metrics lines already written for epochs up to `upto` (later lines, written after the
/// last checkpoint, are dropped so that a resumed run does not repeat them).
fn kept_lines(path: &Path, upto: usize) -> Vec<String> {
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

/// Run (or resume) every run of `exp` under `out/<name>/`.
pub fn run(
    exp: &Experiment,
    out: &Path,
    mut on_epoch: impl FnMut(&str, &EpochMetrics),
) -> Result<Vec<RunOutcome>> {
    let split = crate::data::load(&exp.data_spec())?;
    let dir = out.join(&exp.name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(&dir))?;
    let schedule = Schedule::parse(&exp.schedule)?;
    let mut outcomes = vec![];
    for &optimizer in &exp.optimizers {
        for &seed in &exp.seeds {
            let run = format!("{}-seed{seed}", optimizer_name(optimizer));
            let metrics = dir.join(format!("{run}.jsonl"));
            let checkpoint = dir.join(format!("{run}.safetensors"));
            let done = kept_lines(&metrics, exp.epochs).len();
            if done >= exp.epochs {
                outcomes.push(RunOutcome {
                    optimizer,
                    seed,
                    trained: 0,
                    metrics,
                });
                continue;
            }
            // Resume from the checkpoint: keep the metrics of the epochs it holds.
            let resumed = if checkpoint.is_file() {
                let t = candle_core::safetensors::load(&checkpoint, &candle_core::Device::Cpu)?;
                t.get("meta/epoch")
                    .map(|e| e.to_vec1::<u32>())
                    .transpose()?
                    .map_or(0, |v| v[0] as usize)
            } else {
                0
            };
            let mut lines = kept_lines(&metrics, resumed);
            let cfg = TrainConfig {
                optimizer,
                epochs: exp.epochs,
                batch: exp.batch,
                lr: exp.lr,
                schedule,
                momentum: exp.momentum,
                weight_decay: exp.weight_decay,
                seed,
                skeleton_init: true,
                checkpoint: Some(checkpoint.clone()),
                resume: true,
            };
            let write = |lines: &[String]| -> Result<()> {
                let tmp = metrics.with_extension("jsonl.tmp");
                std::fs::write(
                    &tmp,
                    lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
                )
                .and_then(|_| std::fs::rename(&tmp, &metrics))
                .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(&metrics))
            };
            write(&lines)?;
            let mut trained = 0;
            let mut failure = None;
            train(&exp.model(seed)?, &split, &cfg, |m| {
                lines.push(serde_json::to_string(m).unwrap_or_default());
                if let Err(e) = write(&lines) {
                    failure.get_or_insert(e);
                }
                trained += 1;
                on_epoch(&run, m);
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            outcomes.push(RunOutcome {
                optimizer,
                seed,
                trained,
                metrics,
            });
        }
    }
    Ok(outcomes)
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// The results table of an experiment, as Markdown, from the metrics files under
/// `out/<name>/`: per optimizer, mean ± standard deviation over seeds of the final and best
/// test accuracy and the final test loss, the mean time per epoch, and the runs that had a
/// guard activation.
pub fn summary(exp: &Experiment, out: &Path) -> Result<String> {
    let dir = out.join(&exp.name);
    let mut s = String::from("| optimizer | runs | epochs | final test acc | best test acc | final test loss | s/epoch | runs with guard |\n|---|---|---|---|---|---|---|---|\n");
    for &optimizer in &exp.optimizers {
        let (mut fin, mut best, mut loss, mut secs, mut guarded, mut epochs) =
            (vec![], vec![], vec![], vec![], 0, vec![]);
        for &seed in &exp.seeds {
            let path = dir.join(format!("{}-seed{seed}.jsonl", optimizer_name(optimizer)));
            let ms: Vec<EpochMetricsRow> = std::fs::read_to_string(&path)
                .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(&path))?
                .lines()
                .map(serde_json::from_str)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::invalid(format!("metrics: {e}")).in_file(&path))?;
            let Some(last) = ms.last() else { continue };
            fin.push(last.test_accuracy);
            best.push(ms.iter().map(|m| m.test_accuracy).fold(0.0, f64::max));
            loss.push(last.test_loss);
            secs.extend(ms.iter().map(|m| m.seconds));
            guarded += (last.guarded_steps > 0) as usize;
            epochs.push(ms.len());
        }
        let f = |v: &[f64], d: usize| {
            let (m, sd) = mean_std(v);
            format!("{m:.d$} ± {sd:.d$}")
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {} |\n",
            optimizer_name(optimizer),
            fin.len(),
            epochs.iter().min().copied().unwrap_or(0),
            f(&fin, 4),
            f(&best, 4),
            f(&loss, 4),
            mean_std(&secs).0,
            guarded
        );
    }
    Ok(s)
}

/// The fields of a metrics line the summary reads.
#[derive(Deserialize)]
struct EpochMetricsRow {
    test_accuracy: f64,
    test_loss: f64,
    seconds: f64,
    guarded_steps: usize,
}
