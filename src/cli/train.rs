//! `ecc train`: train a model with one or several optimizers, with progress, metrics,
//! checkpoints and a results table.

use super::common::{check_appended, check_output, stop_on_ctrl_c, STOP};
use anyhow::Result;
use ecc::import;
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
    /// Concrete dims for the model's input, as NAME=DxDx... (the batch first): to train a
    /// model exported at another image size on this data, where its layers allow it (e.g.
    /// torchvision's resnet18, exported at 224x224, on CIFAR-10 with
    /// --input-shape x=1x3x32x32). Also for inputs with symbolic non-batch dims.
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shapes: Vec<String>,
    /// sgd, ec-sgd, path-sgd, sgd-ec-init (a control: SGD from the model EC-SGD starts
    /// from, skeleton weights at ±1, which separates the effect of the update rule from
    /// that of the initialization), balanced-sgd (SGD on the class's balanced
    /// representative, for fine-tuning: docs/balanced-sgd.md) or gsgd-ref (the reference
    /// code's heuristic for BN networks: docs/gsgd-ref.md); or several side by side:
    /// both (sgd, ec-sgd), compare (sgd, ec-sgd, sgd-ec-init), finetune (sgd,
    /// balanced-sgd) or all. [default: compare; finetune for a trained model, see
    /// --keep-function]
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// [default: 0.05; 0.01 for a trained model]
    #[arg(long)]
    lr: Option<f64>,
    /// constant, step:EVERY:GAMMA, exp:K (lr * exp(-K * epoch)) or cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// [default: 0.9; 0 for a trained model]
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed of the shuffle (same seed, same weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// EC-SGD, sgd-ec-init and balanced-sgd (not gsgd-ref): keep the imported model's
    /// function at the start (EC-SGD: the canonical form) instead of setting the free
    /// skeleton values to ±1
    /// as the reference does for a fresh model. See the README on the scale of V. A model
    /// that is already trained (its test loss below half that of a uniform guess) gets the
    /// fine-tuning defaults for the options not given, this one too when --optimizer is
    /// not given (README, "Fine-tuning").
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

/// The defaults for a fresh model and, for a model that looks trained
/// (`ecc::train::looks_trained`), the fine-tuning ones: plain SGD and balanced SGD, both from
/// the model's own function, at a fifth of the learning rate and without momentum (issue
/// 15: the fresh defaults, lr 0.05 with momentum 0.9, make a trained MNIST MLP worse in its
/// first epoch).
const FRESH: (&str, f64, f64) = ("compare", 0.05, 0.9);
const FINE_TUNE: (&str, f64, f64) = ("finetune", 0.01, 0.0);

/// The optimizers of an --optimizer value.
fn kinds_of(name: &str) -> Result<Vec<OptimizerKind>> {
    Ok(match name {
        "both" => vec![OptimizerKind::Sgd, OptimizerKind::EcSgd],
        "compare" => vec![
            OptimizerKind::Sgd,
            OptimizerKind::EcSgd,
            OptimizerKind::SgdEcInit,
        ],
        "finetune" => vec![OptimizerKind::Sgd, OptimizerKind::BalancedSgd],
        "all" => OptimizerKind::ALL.to_vec(),
        one => vec![OptimizerKind::from_name(one).ok_or_else(|| {
            ecc::Error::usage(format!(
                "--optimizer '{one}': sgd, ec-sgd, path-sgd, sgd-ec-init, balanced-sgd, \
                 gsgd-ref, both, compare, finetune or all"
            ))
        })?],
    })
}

/// Every option checked before any work (the defaults that depend on the model are valid
/// either way); returns the schedule.
fn check(a: &Args) -> Result<Schedule> {
    for (lr, momentum) in [(FRESH.1, FRESH.2), (FINE_TUNE.1, FINE_TUNE.2)] {
        let (lr, momentum) = (a.lr.unwrap_or(lr), a.momentum.unwrap_or(momentum));
        ecc::train::check_options(a.epochs, a.batch, lr, momentum, a.weight_decay)?;
    }
    check_output("-o", a.output.as_deref())?;
    check_output("--checkpoint", a.checkpoint.as_deref())?;
    check_appended("--metrics", a.metrics.as_deref())?;
    let kinds = kinds_of(a.optimizer.as_deref().unwrap_or(FRESH.0))?;
    if (a.output.is_some() || a.checkpoint.is_some()) && kinds.len() > 1 {
        return Err(ecc::Error::usage(
            "-o and --checkpoint are for one optimizer: choose one of sgd, ec-sgd, path-sgd, sgd-ec-init, balanced-sgd or gsgd-ref",
        )
        .into());
    }
    Ok(Schedule::parse(&a.schedule)?)
}

/// The run's optimizers, lr, momentum and start: the options given, the others from the
/// fresh or the fine-tuning defaults, by the given model's epoch-0 test loss (said in a
/// note when the fine-tuning ones are used).
struct Settings {
    kinds: Vec<OptimizerKind>,
    lr: f64,
    momentum: f64,
    keep_function: bool,
}

fn settings(a: &Args, given: &EpochMetrics, classes: usize) -> Result<Settings> {
    let chosen = |d: (&str, f64, f64), keep: bool| -> Result<Settings> {
        Ok(Settings {
            kinds: kinds_of(a.optimizer.as_deref().unwrap_or(d.0))?,
            lr: a.lr.unwrap_or(d.1),
            momentum: a.momentum.unwrap_or(d.2),
            keep_function: a.keep_function || keep,
        })
    };
    if !ecc::train::looks_trained(given.test_loss, classes) {
        return chosen(FRESH, false);
    }
    let mut used = vec![];
    if a.optimizer.is_none() {
        used.push(format!("--optimizer {}", FINE_TUNE.0));
    }
    if a.lr.is_none() {
        used.push(format!("--lr {}", FINE_TUNE.1));
    }
    if a.momentum.is_none() {
        used.push(format!("--momentum {}", FINE_TUNE.2));
    }
    // The start follows --optimizer: the fine-tuning set keeps the function; an optimizer
    // chosen by name starts as documented for it (the skeleton reset is shown and named).
    let keep = a.optimizer.is_none();
    if keep && !a.keep_function {
        used.push("--keep-function".into());
    }
    if !used.is_empty() {
        println!(
            "note: the model as given is trained (test loss {:.4} < ½ ln {classes}): fine-tuning \
             defaults {} (give an option to choose it)",
            given.test_loss,
            used.join(" ")
        );
    }
    chosen(FINE_TUNE, keep)
}

pub fn run(mut a: Args) -> Result<()> {
    let schedule = check(&a)?;
    stop_on_ctrl_c();
    let opts = super::common::input_shape_options(&a.input_shapes)?;
    let g = match &a.model {
        Some(p) => import::load_file(p, &opts)?,
        None => import::load_bytes(DEFAULT_MODEL, &opts)?,
    };
    // An EC graph's tensors are path coordinates already: SGD on them is EC-SGD's step
    // (docs/ec-graph.md); the other optimizers would apply their own change of
    // coordinates on top.
    if ecc::ec::graph::is_ec_graph(&g) {
        match a.optimizer.as_deref() {
            None => {
                println!("note: the model is an EC graph: SGD on its coordinates is EC-SGD's step (--optimizer sgd)");
                a.optimizer = Some("sgd".into());
            }
            Some("sgd") => {}
            Some(other) => {
                return Err(ecc::Error::usage(format!(
                    "--optimizer {other} on an EC graph: its tensors are path coordinates already, and SGD on them is EC-SGD's step; use --optimizer sgd (or train the model itself with {other})"
                ))
                .into())
            }
        }
    }
    let split = ecc::data::load(&a.data)?;
    let name = a.model.as_ref().map_or_else(
        || "models/mlp-digits.onnx (embedded)".into(),
        |p| p.display().to_string(),
    );
    super::common::print_notes(&g, &name);
    // The given model's epoch-0 row decides the defaults; every optimizer's row reuses it.
    let mut seen = vec![];
    let probe = TrainConfig {
        batch: a.batch,
        ..TrainConfig::default()
    };
    let given = seen_row(&g, &split, &probe, Start::Given, &mut seen)?;
    let classes = ecc::train::classes(&g);
    let set = settings(&a, &given, classes)?;
    println!(
        "model {name}, data {} ({} train / {} test), {} epochs, batch {}, lr {}, momentum {}",
        split.name,
        split.train.len(),
        split.test.len(),
        a.epochs,
        a.batch,
        set.lr,
        set.momentum
    );
    let mut sink = Metrics::open(&a)?;
    if set.keep_function && set.kinds.contains(&OptimizerKind::EcSgd) {
        if let Some(note) = ecc::train::v_scale_note(&g, set.lr) {
            println!("note: {note}");
        }
    }
    // Path-SGD's γ far from 1 (a deep net, or weights far from unit scale): say what the
    // learning rate means for it. A model Path-SGD does not apply to says so when it trains.
    if set.kinds.contains(&OptimizerKind::PathSgd) {
        if let Ok(Some(note)) = ecc::train::path_sgd_note(&g, set.lr) {
            println!("note: {note}");
        }
    }
    let (mut rows, mut diverged) = (vec![], vec![]);
    let several = set.kinds.len() > 1;
    for kind in set.kinds {
        let cfg = TrainConfig {
            optimizer: kind,
            epochs: a.epochs,
            batch: a.batch,
            lr: set.lr,
            schedule,
            momentum: set.momentum,
            weight_decay: a.weight_decay,
            seed: a.seed,
            skeleton_init: !set.keep_function,
            checkpoint: a.checkpoint.clone(),
            resume: a.resume,
            augment: a.augment,
        };
        match train_one(&g, &split, &cfg, &a, &mut sink, &mut seen) {
            Ok(r) => rows.extend(r),
            // Side by side, one optimizer's divergence is a result: the others still run.
            Err(e) if several && is_diverged(&e) => {
                println!("  {:<7} {e}", kind.name());
                diverged.push(kind);
            }
            // Side by side, an optimizer that does not apply to this model is skipped.
            Err(e) if several && is_unsupported(&e) => {
                println!("  {:<7} skipped: {e}", kind.name());
            }
            Err(e) => return Err(e),
        }
    }
    print_table(&rows, &diverged);
    match diverged.as_slice() {
        [] => Ok(()),
        d => Err(ecc::Error::new(ecc::ErrorKind::Diverged(format!(
            "{}; the other optimizers finished (table above)",
            d.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
        )))
        .into()),
    }
}

fn is_unsupported(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ecc::Error>()
        .is_some_and(|e| matches!(e.kind, ecc::ErrorKind::Unsupported(_)))
}

fn is_diverged(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ecc::Error>()
        .is_some_and(|e| matches!(e.kind, ecc::ErrorKind::Diverged(_)))
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

fn print_table(rows: &[Vec<EpochMetrics>], diverged: &[OptimizerKind]) {
    println!(
        "\n{:<12} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "optimizer", "test acc", "best acc", "test loss", "s/epoch", "guarded"
    );
    for h in rows.iter().filter(|h| !h.is_empty()) {
        let last = h.last().expect("not empty");
        let best = h.iter().map(|m| m.test_accuracy).fold(0.0, f64::max);
        let secs = h.iter().map(|m| m.seconds).sum::<f64>() / h.len() as f64;
        println!(
            "{:<12} {:>9.4} {best:>9.4} {:>9.4} {secs:>10.3} {:>8}",
            last.optimizer.name(),
            last.test_accuracy,
            last.test_loss,
            last.guarded_steps
        );
    }
    for k in diverged {
        println!("{:<12} {:>9}", k.name(), "diverged");
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
