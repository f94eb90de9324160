//! `ecc train`: train a model with one or several optimizers, with progress, metrics,
//! checkpoints and a results table.

use super::common::{check_appended, check_output, stop_on_ctrl_c, STOP};
use anyhow::Result;
use ecc::import::{self, ImportOptions};
use ecc::train::{
    start_row, EpochMetrics, Hooks, OptimizerKind, Schedule, Start, StepInfo, TrainConfig,
};
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The default model of `ecc train`: models/mlp-digits.onnx, embedded.
const DEFAULT_MODEL: &[u8] = include_bytes!("../../models/mlp-digits.onnx");

#[derive(clap::Args)]
pub struct Args {
    /// The model (default: the embedded models/mlp-digits.onnx).
    model: Option<PathBuf>,
    /// digits, mnist:DIR, fashion-mnist:DIR (scripts/fetch-data.sh fetches those two) or
    /// cifar10:DIR (the binary batches, data_batch_1.bin ... test_batch.bin).
    #[arg(long, default_value = "digits")]
    data: String,
    /// sgd, ec-sgd, path-sgd or sgd-ec-init (a control: SGD from the model EC-SGD starts
    /// from, skeleton weights at ±1, which separates the effect of the update rule from
    /// that of the initialization); or several side by side: both (sgd, ec-sgd), compare
    /// (sgd, ec-sgd, sgd-ec-init) or all (sgd, ec-sgd, path-sgd, sgd-ec-init).
    #[arg(long, default_value = "compare")]
    optimizer: String,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// constant, step:EVERY:GAMMA, exp:K (lr * exp(-K * epoch)) or cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed of the shuffle (same seed, same weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// EC-SGD: keep the imported model's function at the start (the canonical form)
    /// instead of setting the free skeleton values to ±1 as the reference does for a
    /// fresh model. See the README on the scale of V.
    #[arg(long)]
    keep_function: bool,
    /// Write metrics as JSON lines.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Write a safetensors checkpoint here after every epoch (one optimizer only).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Continue from --checkpoint if it exists.
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    /// Write the trained model (one optimizer only).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Augment the training images (the standard CIFAR protocol: random crop with 4
    /// pixels of black padding, horizontal flip), seeded by --seed and the step.
    #[arg(long)]
    augment: bool,
}

/// Every option checked before any work; returns the optimizers and the schedule.
fn check(a: &Args) -> Result<(Vec<OptimizerKind>, Schedule)> {
    ecc::train::check_options(a.epochs, a.batch, a.lr, a.momentum, a.weight_decay)?;
    check_output("-o", a.output.as_deref())?;
    check_output("--checkpoint", a.checkpoint.as_deref())?;
    check_appended("--metrics", a.metrics.as_deref())?;
    let kinds = match a.optimizer.as_str() {
        "both" => vec![OptimizerKind::Sgd, OptimizerKind::EcSgd],
        "compare" => vec![
            OptimizerKind::Sgd,
            OptimizerKind::EcSgd,
            OptimizerKind::SgdEcInit,
        ],
        "all" => OptimizerKind::ALL.to_vec(),
        one => vec![OptimizerKind::from_name(one).ok_or_else(|| {
            ecc::Error::usage(format!(
                "--optimizer '{one}': sgd, ec-sgd, path-sgd, sgd-ec-init, both, compare or all"
            ))
        })?],
    };
    if (a.output.is_some() || a.checkpoint.is_some()) && kinds.len() > 1 {
        return Err(ecc::Error::usage(
            "-o and --checkpoint are for one optimizer: choose --optimizer sgd, ec-sgd, path-sgd or sgd-ec-init",
        )
        .into());
    }
    Ok((kinds, Schedule::parse(&a.schedule)?))
}

pub fn run(a: Args) -> Result<()> {
    let (kinds, schedule) = check(&a)?;
    stop_on_ctrl_c();
    let g = match &a.model {
        Some(p) => import::load_file(p, &ImportOptions::default())?,
        None => import::load_bytes(DEFAULT_MODEL, &ImportOptions::default())?,
    };
    let split = ecc::data::load(&a.data)?;
    let name = a.model.as_ref().map_or_else(
        || "models/mlp-digits.onnx (embedded)".into(),
        |p| p.display().to_string(),
    );
    println!(
        "model {name}, data {} ({} train / {} test), {} epochs, batch {}, lr {}",
        split.name,
        split.train.len(),
        split.test.len(),
        a.epochs,
        a.batch,
        a.lr
    );
    let mut sink = Metrics::open(&a)?;
    if a.keep_function && kinds.contains(&OptimizerKind::EcSgd) {
        if let Some(note) = ecc::train::v_scale_note(&g, a.lr) {
            println!("note: {note}");
        }
    }
    let (mut rows, mut seen) = (vec![], vec![]);
    for kind in kinds {
        let cfg = TrainConfig {
            optimizer: kind,
            epochs: a.epochs,
            batch: a.batch,
            lr: a.lr,
            schedule,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            seed: a.seed,
            skeleton_init: !a.keep_function,
            checkpoint: a.checkpoint.clone(),
            resume: a.resume,
            augment: a.augment,
        };
        rows.extend(train_one(&g, &split, &cfg, &a, &mut sink, &mut seen)?);
    }
    print_table(&rows);
    Ok(())
}

/// Train with one optimizer: a progress bar, a line and a metrics record per epoch, the
/// trained model written. `None` when a resumed run had nothing left to do.
fn train_one(
    g: &ecc::ir::Graph,
    split: &ecc::data::Split,
    cfg: &TrainConfig,
    a: &Args,
    sink: &mut Metrics,
    seen: &mut Vec<EpochMetrics>,
) -> Result<Option<Vec<EpochMetrics>>> {
    let label = cfg.optimizer.name();
    let resuming = cfg.resume && cfg.checkpoint.as_ref().is_some_and(|c| c.is_file());
    if !resuming {
        start_rows(g, split, cfg, sink, seen)?;
    }
    let bar = RefCell::new(Bar::default());
    let sink = RefCell::new(sink);
    let hooks = Hooks {
        on_step: Box::new(|i| bar.borrow_mut().update(label, i)),
        on_epoch: Box::new(|m| {
            bar.borrow_mut().finish();
            println!(
                "  {:<7} epoch {:>3}  train loss {:.4}  test loss {:.4}  test acc {:.4}  {:.2}s",
                label, m.epoch, m.train_loss, m.test_loss, m.test_accuracy, m.seconds
            );
            sink.borrow_mut().write(m);
        }),
        stop: Some(&STOP),
    };
    let result = ecc::train::train_with(g, split, cfg, hooks);
    sink.borrow().check()?;
    let (trained, hist) = result?;
    if hist.is_empty() {
        println!(
            "  {label:<7} the checkpoint's run has finished all {} epochs: nothing to do (nothing written)",
            cfg.epochs
        );
        return Ok(None);
    }
    if let Some(o) = &a.output {
        ecc::export::write_file(&trained, o)?;
        println!("wrote {}", o.display());
    }
    Ok(Some(hist))
}

/// Epoch 0, before the first step: the model as given and, when the optimizer starts from
/// another function (EC-SGD's skeleton reset), that one too, printed and recorded in the
/// metrics; a start that is worse than the given model is said in words (issue 15: a trained
/// model is never made worse without the user being told).
fn start_rows(
    g: &ecc::ir::Graph,
    split: &ecc::data::Split,
    cfg: &TrainConfig,
    sink: &mut Metrics,
    seen: &mut Vec<EpochMetrics>,
) -> Result<()> {
    let mut rows = vec![Start::Given];
    if ecc::train::start_changes_function(cfg) {
        rows.push(Start::SkeletonReset);
    }
    let rows = rows
        .into_iter()
        .map(|start| seen_row(g, split, cfg, start, seen))
        .collect::<Result<Vec<_>>>()?;
    for m in &rows {
        let what = match m.start {
            Some(Start::SkeletonReset) => "after the skeleton reset (the start)",
            _ => "the model as given",
        };
        println!(
            "  {:<7} epoch   0  test loss {:.4}  test acc {:.4}  {what}",
            cfg.optimizer.name(),
            m.test_loss,
            m.test_accuracy
        );
        sink.write(m);
    }
    sink.check()?;
    if let [given, reset] = rows.as_slice() {
        if reset.test_accuracy < given.test_accuracy - 0.005 {
            println!(
                "  note: {}'s start (the skeleton reset: its chains' weights at ±1) changes this \
                 model:\n        test acc {:.4} -> {:.4}; --keep-function trains from the model's own function",
                cfg.optimizer.name(),
                given.test_accuracy,
                reset.test_accuracy
            );
        }
    }
    Ok(())
}

/// The epoch-0 row of `start`: the model as given, and the skeleton-reset start (which EC-SGD
/// and `sgd-ec-init` share), are the same models for every optimizer of the run, so each is
/// evaluated once and kept in `seen`.
fn seen_row(
    g: &ecc::ir::Graph,
    split: &ecc::data::Split,
    cfg: &TrainConfig,
    start: Start,
    seen: &mut Vec<EpochMetrics>,
) -> Result<EpochMetrics> {
    let m = match seen.iter().find(|m| m.start == Some(start)) {
        Some(m) => m.clone(),
        None => {
            let m = start_row(g, split, cfg, start, false)?;
            seen.push(m.clone());
            m
        }
    };
    Ok(EpochMetrics {
        optimizer: cfg.optimizer,
        lr: cfg.lr,
        ..m
    })
}

fn print_table(rows: &[Vec<EpochMetrics>]) {
    println!(
        "\n{:<11} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "optimizer", "test acc", "best acc", "test loss", "s/epoch", "guarded"
    );
    for h in rows.iter().filter(|h| !h.is_empty()) {
        let last = h.last().expect("not empty");
        let best = h.iter().map(|m| m.test_accuracy).fold(0.0, f64::max);
        let secs = h.iter().map(|m| m.seconds).sum::<f64>() / h.len() as f64;
        println!(
            "{:<11} {:>9.4} {best:>9.4} {:>9.4} {secs:>10.3} {:>8}",
            last.optimizer.name(),
            last.test_accuracy,
            last.test_loss,
            last.guarded_steps
        );
    }
}

/// The `--metrics` file: one JSON line per epoch, appended on `--resume`. A line that cannot
/// be written stops the run after its step (the checkpoint is kept) and fails it (exit 2).
struct Metrics {
    file: Option<(std::fs::File, PathBuf)>,
    error: Option<String>,
}

impl Metrics {
    /// Open the file; on `--resume`, keep the lines of the epochs the checkpoint holds (a
    /// kill between an epoch's line and its checkpoint leaves one line more, written again).
    fn open(a: &Args) -> Result<Self> {
        let (Some(p), true) = (&a.metrics, a.resume) else {
            return Self::open_at(a.metrics.as_ref(), false);
        };
        // Without a checkpoint file the run starts over (its epoch-0 rows included).
        let kept = match a.checkpoint.as_ref().filter(|c| c.is_file()) {
            Some(c) => ecc::train::metrics_upto(p, ecc::train::checkpoint_epoch(c)?),
            None => vec![],
        };
        let regular = std::fs::metadata(p).is_ok_and(|m| m.is_file());
        if regular {
            let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
            ecc::files::write_bytes(p, text.as_bytes())?;
        }
        Self::open_at(Some(p), true)
    }

    fn open_at(p: Option<&PathBuf>, append: bool) -> Result<Self> {
        let file = match p {
            Some(p) => Some((
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(append)
                    .write(true)
                    .truncate(!append)
                    .open(p)
                    .map_err(|e| Self::failure(p, e.to_string()))?,
                p.clone(),
            )),
            None => None,
        };
        Ok(Metrics { file, error: None })
    }

    fn failure(p: &std::path::Path, e: String) -> ecc::Error {
        ecc::Error::new(ecc::ErrorKind::Write(e)).in_file(p)
    }

    fn write(&mut self, m: &EpochMetrics) {
        if let Some((f, _)) = &mut self.file {
            let line = serde_json::to_string(m).unwrap_or_default();
            if let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush()) {
                self.error = Some(e.to_string());
                STOP.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The write error that stopped the run, if any.
    fn check(&self) -> ecc::Result<()> {
        match (&self.error, &self.file) {
            (Some(e), Some((_, p))) => Err(Self::failure(p, format!("{e} (training stopped)"))),
            _ => Ok(()),
        }
    }
}

/// The progress bar of one epoch.
#[derive(Default)]
struct Bar(Option<(indicatif::ProgressBar, Instant)>);

impl Bar {
    fn update(&mut self, label: &str, i: &StepInfo) {
        let (pb, t0) = self.0.get_or_insert_with(|| {
            let pb = indicatif::ProgressBar::new(i.samples_total as u64);
            let style =
                indicatif::ProgressStyle::with_template("  {prefix} [{bar:30}] {pos}/{len} {msg}")
                    .expect("a valid template")
                    .progress_chars("=> ");
            pb.set_style(style);
            pb.set_prefix(format!("{label:<7} epoch {:>3}", i.epoch));
            (pb, Instant::now())
        });
        pb.set_position(i.samples as u64);
        let rate = i.samples as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "loss {:.4} acc {:.4} {rate:.0} samples/s",
            i.loss, i.accuracy
        ));
    }

    fn finish(&mut self) {
        if let Some((pb, _)) = self.0.take() {
            pb.finish_and_clear();
        }
    }
}
