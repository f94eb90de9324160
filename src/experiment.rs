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
                Error::usage(format!(
                    "experiment: no learning rate for {}",
                    optimizer_name(o)
                ))
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

    fn model(&self, model: &str, seed: u64) -> Result<crate::ir::Graph> {
        if model.starts_with("mlp:") || model.starts_with("cnn:") {
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

    /// Every (model, optimizer, seed) run, in the order they are trained.
    pub fn runs(&self) -> Vec<(&str, OptimizerKind, u64)> {
        let mut v = vec![];
        for m in self.model.list() {
            for &o in &self.optimizers {
                for &s in &self.seeds {
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

pub fn optimizer_name(k: OptimizerKind) -> String {
    k.name().to_string()
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
    let schedule = Schedule::parse(&exp.schedule)?;
    let mut outcomes = vec![];
    for (model, optimizer, seed) in exp.runs() {
        {
            let dir = exp.run_dir(out, model);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(&dir))?;
            let mut run = format!("{}-seed{seed}", optimizer_name(optimizer));
            if let Models::Many(_) = exp.model {
                run = format!("{}/{run}", label(model));
            }
            let file =
                |ext: &str| dir.join(format!("{}-seed{seed}.{ext}", optimizer_name(optimizer)));
            let metrics = file("jsonl");
            let checkpoint = file("safetensors");
            let kept = kept_lines(&metrics, exp.epochs);
            let done = kept.iter().filter(|l| !is_start_row(l)).count();
            let diverged = kept.iter().find_map(|l| diverged_message(l));
            if done >= exp.epochs || diverged.is_some() {
                outcomes.push(RunOutcome {
                    model: model.to_string(),
                    optimizer,
                    seed,
                    trained: 0,
                    metrics,
                    diverged,
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
                lr: exp.lr.of(optimizer)?,
                schedule,
                momentum: exp.momentum,
                weight_decay: exp.weight_decay,
                seed,
                skeleton_init: !exp.keep_function,
                checkpoint: Some(checkpoint.clone()),
                resume: true,
            };
            let graph = exp.model(model, seed)?;
            if exp.keep_function && !lines.iter().any(|l| is_start_row(l)) {
                lines.insert(0, start_row(&graph, &split, &cfg)?);
            }
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
            let result = train(&graph, &split, &cfg, |m| {
                lines.push(serde_json::to_string(m).unwrap_or_default());
                if let Err(e) = write(&lines) {
                    failure.get_or_insert(e);
                }
                trained += 1;
                on_epoch(&run, m);
            });
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
            outcomes.push(RunOutcome {
                model: model.to_string(),
                optimizer,
                seed,
                trained,
                metrics,
                diverged,
            });
        }
    }
    Ok(outcomes)
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
/// `keep_function`, the canonical form), before any step.
fn start_row(
    graph: &crate::ir::Graph,
    split: &crate::data::Split,
    cfg: &TrainConfig,
) -> Result<String> {
    let g = crate::train::logits_graph(graph);
    let (start, _) = crate::train::optimizer_for(&g, cfg)?;
    let ex = crate::exec::Executor::new(&start)?;
    let (train_loss, _) = crate::train::evaluate(&ex, &start, &split.train, 512)?;
    let (test_loss, test_accuracy) = crate::train::evaluate(&ex, &start, &split.test, 512)?;
    let m = EpochMetrics {
        optimizer: cfg.optimizer,
        epoch: 0,
        lr: cfg.lr,
        train_loss,
        test_loss,
        test_accuracy,
        seconds: 0.0,
        guarded_steps: 0,
    };
    Ok(serde_json::to_string(&m).unwrap_or_default())
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// The fields of a metrics line that the summary and the plots read.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub seconds: f64,
    pub guarded_steps: usize,
}

/// The metrics of one run, as written by [`run`].
#[derive(Debug, Clone)]
pub struct RunMetrics {
    pub model: String,
    pub optimizer: OptimizerKind,
    pub seed: u64,
    pub rows: Vec<Row>,
    /// (epoch, message) when the run stopped on a non-finite loss.
    pub diverged: Option<(usize, String)>,
}

/// Read the metrics of every run of `exp` under `out`; a run with no metrics file is an error
/// (the summary must not quietly average over fewer seeds).
pub fn load_metrics(exp: &Experiment, out: &Path) -> Result<Vec<RunMetrics>> {
    exp.runs()
        .into_iter()
        .map(|(model, optimizer, seed)| {
            let path = exp
                .run_dir(out, model)
                .join(format!("{}-seed{seed}.jsonl", optimizer_name(optimizer)));
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(&path))?;
            let (mut rows, mut diverged) = (vec![], None);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::invalid(format!("metrics: {e}")).in_file(&path))?;
                if let Some(msg) = v["diverged"].as_str() {
                    let epoch = v["epoch"].as_u64().unwrap_or(0) as usize;
                    diverged = Some((epoch, msg.to_string()));
                } else {
                    rows.push(
                        serde_json::from_value::<Row>(v)
                            .map_err(|e| Error::invalid(format!("metrics: {e}")).in_file(&path))?,
                    );
                }
            }
            Ok(RunMetrics {
                model: model.to_string(),
                optimizer,
                seed,
                rows,
                diverged,
            })
        })
        .collect()
}

/// `mean ± sd` with `d` decimals.
fn pm(v: &[f64], d: usize) -> String {
    let (m, sd) = mean_std(v);
    format!("{m:.d$} ± {sd:.d$}")
}

/// The results table of an experiment, as Markdown, from the metrics files under
/// `out/<name>/`: per model and optimizer, mean ± standard deviation over seeds of the final
/// and best test accuracy and the final test loss, the mean time per epoch, and the runs that
/// had a guard activation. When the experiment has both SGD and EC-SGD, a second table gives
/// the gap EC-SGD − SGD per model, paired by seed.
pub fn summary(exp: &Experiment, out: &Path) -> Result<String> {
    let runs = load_metrics(exp, out)?;
    let sweep = matches!(exp.model, Models::Many(_));
    let mut s = String::new();
    if sweep {
        s += "| model ";
    }
    s += "| optimizer | runs | epochs | final test acc | best test acc | final test loss | s/epoch | runs with guard | diverged |\n";
    if sweep {
        s += "|---";
    }
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for model in exp.model.list() {
        for &optimizer in &exp.optimizers {
            let all: Vec<&RunMetrics> = runs
                .iter()
                .filter(|r| r.model == model && r.optimizer == optimizer)
                .collect();
            let diverged: Vec<String> = all
                .iter()
                .filter_map(|r| {
                    r.diverged
                        .as_ref()
                        .map(|(e, _)| format!("seed {} (epoch {e})", r.seed))
                })
                .collect();
            let mine: Vec<&RunMetrics> = all
                .iter()
                .copied()
                .filter(|r| r.diverged.is_none() && !r.rows.is_empty())
                .collect();
            let last = |f: fn(&Row) -> f64| -> Vec<f64> {
                mine.iter().map(|r| f(r.rows.last().unwrap())).collect()
            };
            let best: Vec<f64> = mine
                .iter()
                .map(|r| r.rows.iter().map(|m| m.test_accuracy).fold(0.0, f64::max))
                .collect();
            let secs: Vec<f64> = mine
                .iter()
                .flat_map(|r| r.rows.iter().filter(|m| m.epoch > 0).map(|m| m.seconds))
                .collect();
            if sweep {
                s += &format!("| {model} ");
            }
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |\n",
                optimizer_name(optimizer),
                mine.len(),
                mine.iter()
                    .map(|r| r.rows.iter().filter(|m| m.epoch > 0).count())
                    .min()
                    .unwrap_or(0),
                pm(&last(|m| m.test_accuracy), 4),
                pm(&best, 4),
                pm(&last(|m| m.test_loss), 4),
                mean_std(&secs).0,
                mine.iter()
                    .filter(|r| r.rows.last().unwrap().guarded_steps > 0)
                    .count(),
                if diverged.is_empty() {
                    "0".to_string()
                } else {
                    format!("{}: {}", diverged.len(), diverged.join(", "))
                }
            );
        }
    }
    let starts: Vec<(&RunMetrics, &Row)> = runs
        .iter()
        .filter_map(|r| r.rows.iter().find(|m| m.epoch == 0).map(|m| (r, m)))
        .collect();
    if !starts.is_empty() {
        s += "\nBefore the first step (epoch 0: the model each optimizer starts from):\n\n";
        if sweep {
            s += "| model ";
        }
        s += "| optimizer | seed | test acc | test loss | train loss |\n";
        if sweep {
            s += "|---";
        }
        s += "|---|---|---|---|---|\n";
        for (r, m) in starts {
            if sweep {
                s += &format!("| {} ", r.model);
            }
            s += &format!(
                "| {} | {} | {:.4} | {:.6} | {:.6} |\n",
                optimizer_name(r.optimizer),
                r.seed,
                m.test_accuracy,
                m.test_loss,
                m.train_loss
            );
        }
    }
    let ec = OptimizerKind::EcSgd;
    let baselines = [OptimizerKind::Sgd, OptimizerKind::SgdEcInit];
    let present: Vec<OptimizerKind> = baselines
        .into_iter()
        .filter(|b| exp.optimizers.contains(b))
        .collect();
    if exp.optimizers.contains(&ec) && !present.is_empty() {
        s += "\nGap EC-SGD − baseline, paired by seed (mean ± sd over seeds; positive accuracy and negative loss favour EC-SGD):\n\n";
        s += "| model | baseline | seeds | final test acc gap | best test acc gap | final test loss gap | seeds EC-SGD ahead |\n|---|---|---|---|---|---|---|\n";
        for model in exp.model.list() {
            for &base in &present {
                let pick = |o: OptimizerKind, seed: u64| {
                    runs.iter()
                        .find(|r| r.model == model && r.optimizer == o && r.seed == seed)
                        .filter(|r| !r.rows.is_empty() && r.diverged.is_none())
                };
                let (mut acc, mut best, mut loss) = (vec![], vec![], vec![]);
                for &seed in &exp.seeds {
                    if let (Some(a), Some(b)) = (pick(base, seed), pick(ec, seed)) {
                        let (la, lb) = (a.rows.last().unwrap(), b.rows.last().unwrap());
                        acc.push(lb.test_accuracy - la.test_accuracy);
                        let bst = |r: &RunMetrics| {
                            r.rows.iter().map(|m| m.test_accuracy).fold(0.0, f64::max)
                        };
                        best.push(bst(b) - bst(a));
                        loss.push(lb.test_loss - la.test_loss);
                    }
                }
                s += &format!(
                    "| {model} | {} | {} | {} | {} | {} | {} |\n",
                    base.name(),
                    acc.len(),
                    pm(&acc, 4),
                    pm(&best, 4),
                    pm(&loss, 4),
                    acc.iter().filter(|&&d| d > 0.0).count()
                );
            }
        }
    }
    Ok(s)
}

/// A y range that shows the competitive series in detail: series whose final mean is far
/// behind the best one (a diverged run, say) are drawn clipped and marked "off scale" in the
/// legend rather than flattening every other curve.
fn focus(series: &mut [crate::plot::Series], higher_is_better: bool) -> Option<(f64, f64)> {
    let finals: Vec<f64> = series
        .iter()
        .map(|s| s.mean.last().copied().unwrap_or(f64::NAN))
        .collect();
    let best = finals
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .reduce(|a, b| if higher_is_better == (a > b) { a } else { b })?;
    let near = |v: f64| {
        if higher_is_better {
            v >= best - 0.1
        } else {
            v <= 2.0 * best
        }
    };
    // The 10th / 90th percentile of each competitive series' band (skips the first epochs).
    let q = |v: &[f64], p: f64| {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v.get(((v.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
    };
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (s, f) in series.iter_mut().zip(&finals) {
        if !near(*f) {
            s.name += " (off scale)";
            continue;
        }
        let (a, b) = if higher_is_better {
            (q(&s.lo, 0.1), q(&s.hi, 1.0))
        } else {
            (q(&s.lo, 0.0), q(&s.hi, 0.9))
        };
        lo = lo.min(a.unwrap_or(lo));
        hi = hi.max(b.unwrap_or(hi));
    }
    if lo >= hi || lo.is_nan() || hi.is_nan() {
        return None;
    }
    let pad = 0.05 * (hi - lo);
    Some((lo - pad, hi + pad))
}

/// The test-accuracy and test-loss charts of one model of an experiment: per optimizer the
/// mean over seeds per epoch, with the range (min to max) over seeds as the band.
pub fn charts(exp: &Experiment, out: &Path, model: &str) -> Result<[crate::plot::Chart; 2]> {
    use crate::plot::{Chart, Series};
    let runs = load_metrics(exp, out)?;
    let series = |f: fn(&Row) -> f64| -> Vec<Series> {
        exp.optimizers
            .iter()
            .map(|&o| {
                let all: Vec<&RunMetrics> = runs
                    .iter()
                    .filter(|r| r.model == model && r.optimizer == o)
                    .collect();
                let mine: Vec<&RunMetrics> = all
                    .iter()
                    .copied()
                    .filter(|r| r.diverged.is_none())
                    .collect();
                let n = mine.iter().map(|r| r.rows.len()).min().unwrap_or(0);
                let mut name = optimizer_name(o);
                if mine.len() < all.len() {
                    name += &format!(" ({} of {} diverged)", all.len() - mine.len(), all.len());
                }
                let mut s = Series {
                    name,
                    x: vec![],
                    mean: vec![],
                    lo: vec![],
                    hi: vec![],
                };
                for e in 0..n {
                    let v: Vec<f64> = mine.iter().map(|r| f(&r.rows[e])).collect();
                    s.x.push(mine[0].rows[e].epoch as f64);
                    s.mean.push(mean_std(&v).0);
                    s.lo.push(v.iter().copied().fold(f64::INFINITY, f64::min));
                    s.hi.push(v.iter().copied().fold(f64::NEG_INFINITY, f64::max));
                }
                s
            })
            .collect()
    };
    let what = format!("{} ({}, {} seeds)", model, exp.data, exp.seeds.len());
    let mut acc = series(|r| r.test_accuracy);
    let mut loss = series(|r| r.test_loss);
    let acc_range = focus(&mut acc, true);
    let loss_range = focus(&mut loss, false);
    Ok([
        Chart {
            title: format!("Test accuracy: {what}"),
            x_label: "epoch".into(),
            y_label: "test accuracy (mean; band: min to max over seeds)".into(),
            series: acc,
            y_range: acc_range,
            legend_bottom: true,
        },
        Chart {
            title: format!("Test loss: {what}"),
            x_label: "epoch".into(),
            y_label: "test loss (mean; band: min to max over seeds)".into(),
            series: loss,
            y_range: loss_range,
            legend_bottom: false,
        },
    ])
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Io(e.to_string())).in_file(path)
}

/// Write the charts of every model of `exp` as SVG under `dir`; returns the file names
/// (relative to `dir`), accuracy then loss per model.
pub fn write_plots(exp: &Experiment, out: &Path, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut names = vec![];
    for model in exp.model.list() {
        let stem = match exp.model {
            Models::One(_) => exp.name.clone(),
            Models::Many(_) => format!("{}-{}", exp.name, label(model)),
        };
        for (chart, what) in charts(exp, out, model)?.iter().zip(["accuracy", "loss"]) {
            let name = format!("{stem}-test-{what}.svg");
            let path = dir.join(&name);
            std::fs::write(&path, chart.to_svg()).map_err(io_err(&path))?;
            names.push(name);
        }
    }
    Ok(names)
}

/// Regenerate the generated blocks of a results document. A block starts with a line
/// `<!-- ecc experiment FILE.json -->` (FILE relative to the current folder) and ends with
/// `<!-- end -->`; its content becomes the command, the summary table and the plots (written
/// to `plots/` beside the document). Text outside the blocks is kept as written. Returns the
/// experiments regenerated.
pub fn update_doc(doc: &Path, out: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(doc).map_err(io_err(doc))?;
    let plot_dir = doc.parent().unwrap_or(Path::new(".")).join("plots");
    let mut res = String::new();
    let mut done = vec![];
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        res += line;
        res.push('\n');
        let Some(file) = line
            .trim()
            .strip_prefix("<!-- ecc experiment ")
            .and_then(|r| r.strip_suffix("-->"))
            .map(str::trim)
        else {
            continue;
        };
        // Skip the old content up to the end marker.
        if !lines.by_ref().any(|l| l.trim() == "<!-- end -->") {
            return Err(
                Error::invalid(format!("block '{file}' has no '<!-- end -->' line")).in_file(doc),
            );
        }
        let exp = Experiment::load(Path::new(file))?;
        res += &format!(
            "\nCommand: `ecc experiment {file}` (metrics in `{}/{}/`).\n\n",
            out.display(),
            exp.name
        );
        res += &summary(&exp, out)?;
        res.push('\n');
        for pair in write_plots(&exp, out, &plot_dir)?.chunks(2) {
            let imgs: Vec<String> = pair
                .iter()
                .map(|name| format!("![{name}](plots/{name})"))
                .collect();
            res += &imgs.join(" ");
            res.push('\n');
        }
        res += "\n<!-- end -->\n";
        done.push(file.to_string());
    }
    let tmp = doc.with_extension("md.tmp");
    std::fs::write(&tmp, res)
        .and_then(|_| std::fs::rename(&tmp, doc))
        .map_err(io_err(doc))?;
    Ok(done)
}
