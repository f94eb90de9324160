//! Reading an experiment's metrics back: the summary tables, the plots and the generated
//! blocks of a results document. Everything here reads the metrics files only.

use super::{label, Experiment, Models};
use crate::error::{Error, ErrorKind, Result};
use crate::train::OptimizerKind;
use serde::Deserialize;
use std::path::Path;

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

/// The paired t statistic of gaps d (one per seed): mean(d) / (sd(d) / sqrt(n)), the gap in
/// units of its standard error; none for fewer than 2 gaps or gaps all equal. With n = 3
/// seeds (2 degrees of freedom) |t| > 4.30 is significant at 5% two-sided, t > 2.92 one-sided.
pub fn paired_t(d: &[f64]) -> Option<f64> {
    let (m, sd) = mean_std(d);
    (d.len() >= 2 && sd > 0.0).then(|| m / (sd / (d.len() as f64).sqrt()))
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
    /// The machine that trained the epoch (metrics written since 2026-12-02).
    #[serde(default)]
    pub machine: Option<String>,
    /// The build that trained the epoch ([`crate::BUILD`]; metrics written since 2026-12-02
    /// evening).
    #[serde(default)]
    pub build: Option<String>,
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

impl RunMetrics {
    /// Trained without diverging, with at least one metrics row: the runs the statistics use.
    pub fn completed(&self) -> bool {
        self.diverged.is_none() && !self.rows.is_empty()
    }
    /// The epochs trained (rows after epoch 0).
    pub fn epochs(&self) -> usize {
        self.rows.iter().filter(|m| m.epoch > 0).count()
    }
    /// "optimizer seed N", after the model in a sweep over models.
    fn name(&self, sweep: bool) -> String {
        let model = if sweep {
            format!("{} ", self.model)
        } else {
            String::new()
        };
        format!("{model}{} seed {}", self.optimizer.name(), self.seed)
    }
}

/// The runs of one (model, optimizer), and those of them the statistics use: the completed
/// runs that trained all `epochs`, or, while none has, the completed ones part-way.
fn group<'a>(
    runs: &'a [RunMetrics],
    model: &str,
    optimizer: OptimizerKind,
    epochs: usize,
) -> (Vec<&'a RunMetrics>, Vec<&'a RunMetrics>) {
    let all: Vec<&RunMetrics> = runs
        .iter()
        .filter(|r| r.model == model && r.optimizer == optimizer)
        .collect();
    let completed: Vec<&RunMetrics> = all.iter().copied().filter(|r| r.completed()).collect();
    let finished: Vec<&RunMetrics> = completed
        .iter()
        .copied()
        .filter(|r| r.epochs() >= epochs)
        .collect();
    (
        all,
        if finished.is_empty() {
            completed
        } else {
            finished
        },
    )
}

/// A line on an experiment that is under way (runs part-way or not started), or None when
/// every run has finished (trained all its epochs, or diverged).
fn progress(exp: &Experiment, runs: &[RunMetrics]) -> Option<String> {
    let total = exp.runs().len();
    let finished = runs
        .iter()
        .filter(|r| r.diverged.is_some() || r.epochs() >= exp.epochs)
        .count();
    if finished == total {
        return None;
    }
    let sweep = matches!(exp.model, Models::Many(_));
    let partial: Vec<String> = runs
        .iter()
        .filter(|r| r.diverged.is_none() && r.epochs() < exp.epochs)
        .map(|r| {
            format!(
                "{} ({} of {} epochs)",
                r.name(sweep),
                r.epochs(),
                exp.epochs
            )
        })
        .collect();
    let mut s = format!("Under way: {finished} of {total} runs finished");
    if !partial.is_empty() {
        s += &format!("; part-way: {}", partial.join(", "));
    }
    let missing = total - runs.len();
    if missing > 0 {
        s += &format!("; not started: {missing}");
    }
    s += ". Each row holds the runs that finished (the part-way ones while none has).\n\n";
    Some(s)
}

/// Read the metrics of the runs of `exp` under `out` that have a metrics file; none at all
/// is an error. The summary says which runs are missing or part-way ([`progress`]), so it
/// never quietly averages over fewer seeds.
pub fn load_metrics(exp: &Experiment, out: &Path) -> Result<Vec<RunMetrics>> {
    let runs: Vec<RunMetrics> = exp
        .runs()
        .into_iter()
        .filter(|&(model, optimizer, seed)| {
            exp.run_file(out, model, optimizer, seed, "jsonl").is_file()
        })
        .map(|(model, optimizer, seed)| {
            let path = exp.run_file(out, model, optimizer, seed, "jsonl");
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
        .collect::<Result<_>>()?;
    if runs.is_empty() {
        let (model, optimizer, seed) = exp.runs()[0];
        let path = exp.run_file(out, model, optimizer, seed, "jsonl");
        return Err(Error::new(ErrorKind::Io(
            "no metrics for any run yet: run `ecc experiment` on the description first".into(),
        ))
        .in_file(&path));
    }
    Ok(runs)
}

/// `mean ± sd` with `d` decimals.
fn pm(v: &[f64], d: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (m, sd) = mean_std(v);
    format!("{m:.d$} ± {sd:.d$}")
}

/// The results table of an experiment, as Markdown, from the metrics files under
/// `out/<name>/`: per model and optimizer, mean ± standard deviation over seeds of the final
/// and best test accuracy and the final test loss, the final accuracy seed by seed, the
/// accuracy's epoch-to-epoch jitter near the end, the mean time per epoch, the runs that had
/// a guard activation and the runs that diverged; a line first while runs are part-way or
/// not started ([`progress`]). A second table gives the gaps of each method (EC-SGD,
/// gsgd-ref) against each baseline the experiment has (SGD, the control, and EC-SGD for
/// gsgd-ref) per model, paired by seed over the finished runs.
pub fn summary(exp: &Experiment, out: &Path) -> Result<String> {
    let runs = load_metrics(exp, out)?;
    let sweep = matches!(exp.model, Models::Many(_));
    let mut s = progress(exp, &runs).unwrap_or_default();
    if sweep {
        s += "| model ";
    }
    s += "| optimizer | runs | epochs | final test acc | best test acc | final test loss | final acc by seed | jitter | s/epoch | runs with guard | diverged |\n";
    if sweep {
        s += "|---";
    }
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for model in exp.model.list() {
        for &optimizer in &exp.optimizers {
            let (all, mine) = group(&runs, model, optimizer, exp.epochs);
            let diverged: Vec<String> = all
                .iter()
                .filter_map(|r| {
                    r.diverged
                        .as_ref()
                        .map(|(e, _)| format!("seed {} (epoch {e})", r.seed))
                })
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
            // Seed by seed, in the description's order: a bimodal outcome (one seed stuck)
            // shows here while the mean ± sd alone would hide its shape. A run part-way
            // says at which epoch its value is.
            let by_seed: Vec<String> = all
                .iter()
                .map(|r| match (&r.diverged, r.rows.last()) {
                    (Some(_), _) => "diverged".to_string(),
                    (None, Some(m)) if r.epochs() < exp.epochs => {
                        format!("{:.4} (epoch {})", m.test_accuracy, r.epochs())
                    }
                    (None, Some(m)) => format!("{:.4}", m.test_accuracy),
                    (None, None) => "-".to_string(),
                })
                .collect();
            // Epoch-to-epoch noise of the test accuracy near the end: the standard deviation
            // over each run's last 10 epochs, or its last half when shorter (so that a short
            // run's early epochs, far from the end, are not counted as noise), averaged over
            // runs; none for runs of fewer than 4 epochs. A gap smaller than this is within
            // what one more or one fewer epoch would change.
            let jitter: Vec<f64> = mine
                .iter()
                .filter_map(|r| {
                    let trained: Vec<f64> = r
                        .rows
                        .iter()
                        .filter(|m| m.epoch > 0)
                        .map(|m| m.test_accuracy)
                        .collect();
                    let window = (trained.len() / 2).min(10);
                    (window >= 2).then(|| mean_std(&trained[trained.len() - window..]).1)
                })
                .collect();
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                optimizer.name(),
                mine.len(),
                mine.iter()
                    .map(|r| r.rows.iter().filter(|m| m.epoch > 0).count())
                    .min()
                    .unwrap_or(0),
                pm(&last(|m| m.test_accuracy), 4),
                pm(&best, 4),
                pm(&last(|m| m.test_loss), 4),
                by_seed.join(" "),
                if jitter.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.4}", mean_std(&jitter).0)
                },
                if secs.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2}", mean_std(&secs).0)
                },
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
    let mut starts: Vec<(&RunMetrics, &Row)> = runs
        .iter()
        .filter_map(|r| r.rows.iter().find(|m| m.epoch == 0).map(|m| (r, m)))
        .collect();
    // By model, optimizer and seed, in the description's order.
    let models = exp.model.list();
    let at = |r: &RunMetrics| {
        let m = models.iter().position(|&x| x == r.model);
        let o = exp.optimizers.iter().position(|&x| x == r.optimizer);
        (m, o, r.seed)
    };
    starts.sort_by_key(|(r, _)| at(r));
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
                r.optimizer.name(),
                r.seed,
                m.test_accuracy,
                m.test_loss,
                m.train_loss
            );
        }
    }
    // The methods against the baselines (and the reference's heuristic against ecc's
    // exact treatment), where both ran.
    use OptimizerKind::{EcSgd, GsgdRef, Sgd, SgdEcInit};
    let pairs: Vec<(OptimizerKind, OptimizerKind)> = [
        (EcSgd, Sgd),
        (EcSgd, SgdEcInit),
        (GsgdRef, Sgd),
        (GsgdRef, SgdEcInit),
        (GsgdRef, EcSgd),
    ]
    .into_iter()
    .filter(|(m, b)| exp.optimizers.contains(m) && exp.optimizers.contains(b))
    .collect();
    let only_ec = pairs.iter().all(|(m, _)| *m == EcSgd);
    if !pairs.is_empty() {
        let mut rows = String::new();
        if only_ec {
            rows += "\nGap EC-SGD − baseline, paired by seed (mean ± sd over seeds; positive accuracy and negative loss favour EC-SGD):\n\n";
            rows += "| model | baseline | seeds | final test acc gap | best test acc gap | final test loss gap | seeds EC-SGD ahead | t |\n|---|---|---|---|---|---|---|---|\n";
        } else {
            rows += "\nGap method − baseline, paired by seed (mean ± sd over seeds; positive accuracy and negative loss favour the method):\n\n";
            rows += "| model | method | baseline | seeds | final test acc gap | best test acc gap | final test loss gap | seeds method ahead | t |\n|---|---|---|---|---|---|---|---|---|\n";
        }
        let header = rows.len();
        for model in exp.model.list() {
            for &(method, base) in &pairs {
                let pick = |o: OptimizerKind, seed: u64| {
                    runs.iter()
                        .find(|r| r.model == model && r.optimizer == o && r.seed == seed)
                        .filter(|r| r.completed() && r.epochs() >= exp.epochs)
                };
                let (mut acc, mut best, mut loss) = (vec![], vec![], vec![]);
                for &seed in &exp.seeds {
                    if let (Some(a), Some(b)) = (pick(base, seed), pick(method, seed)) {
                        let (la, lb) = (a.rows.last().unwrap(), b.rows.last().unwrap());
                        acc.push(lb.test_accuracy - la.test_accuracy);
                        let bst = |r: &RunMetrics| {
                            r.rows.iter().map(|m| m.test_accuracy).fold(0.0, f64::max)
                        };
                        best.push(bst(b) - bst(a));
                        loss.push(lb.test_loss - la.test_loss);
                    }
                }
                if acc.is_empty() {
                    continue;
                }
                rows += &format!("| {model} ");
                if !only_ec {
                    rows += &format!("| {} ", method.name());
                }
                rows += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    base.name(),
                    acc.len(),
                    pm(&acc, 4),
                    pm(&best, 4),
                    pm(&loss, 4),
                    acc.iter().filter(|&&d| d > 0.0).count(),
                    paired_t(&acc).map_or("-".to_string(), |t| format!("{t:.2}"))
                );
            }
        }
        // No table while no pair of runs has finished.
        if rows.len() > header {
            s += &rows;
        }
    }
    s += &machines(exp, &runs);
    Ok(s)
}

/// A line on the machines that trained the experiment's epochs (rounding, and so the exact
/// numbers, depend on the CPU and its matmul kernels; times per epoch too), and the runs
/// whose epochs more than one recorded kind of machine trained (resumed elsewhere), or more
/// than one recorded build (resumed by a binary that may round differently); empty while no
/// metrics line records its machine.
fn machines(exp: &Experiment, runs: &[RunMetrics]) -> String {
    let sweep = matches!(exp.model, Models::Many(_));
    let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut unrecorded, mut mixed, mut builds) = (0, vec![], vec![]);
    for r in runs {
        let (mut kinds, mut seen): (Vec<&str>, Vec<&str>) = (vec![], vec![]);
        for m in r.rows.iter().filter(|m| m.epoch > 0) {
            // Lines that do not say are not counted as another build or machine.
            if let Some(b) = m.build.as_deref().filter(|b| !seen.contains(b)) {
                seen.push(b);
            }
            let Some(k) = m.machine.as_deref() else {
                unrecorded += 1;
                continue;
            };
            *count.entry(k).or_default() += 1;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        if kinds.len() > 1 {
            mixed.push(r.name(sweep));
        }
        if seen.len() > 1 {
            builds.push(format!("{} ({})", r.name(sweep), seen.join(", ")));
        }
    }
    if count.is_empty() {
        return String::new();
    }
    let mut list: Vec<String> = count.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    if unrecorded > 0 {
        list.push(format!("not recorded: {unrecorded}"));
    }
    let mut s = format!("\nEpochs trained per machine: {}.", list.join("; "));
    if !mixed.is_empty() {
        s += &format!(" Trained on more than one: {}.", mixed.join(", "));
    }
    if !builds.is_empty() {
        s += &format!(" Trained by more than one build: {}.", builds.join("; "));
    }
    s + "\n"
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
                let (all, mine) = group(&runs, model, o, exp.epochs);
                let n = mine.iter().map(|r| r.rows.len()).min().unwrap_or(0);
                let mut name = o.name().to_string();
                let diverged = all.iter().filter(|r| r.diverged.is_some()).count();
                if diverged > 0 {
                    name += &format!(" ({diverged} of {} diverged)", all.len());
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

pub(super) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Io(e.to_string())).in_file(path)
}

/// Write the charts of every model of `exp` as SVG under `dir`; returns the file names
/// (relative to `dir`), accuracy then loss per model.
pub fn write_plots(exp: &Experiment, out: &Path, dir: &Path) -> Result<Vec<String>> {
    crate::files::create_dir(dir)?;
    let mut names = vec![];
    for model in exp.model.list() {
        let stem = match exp.model {
            Models::One(_) => exp.name.clone(),
            Models::Many(_) => format!("{}-{}", exp.name, label(model)),
        };
        for (chart, what) in charts(exp, out, model)?.iter().zip(["accuracy", "loss"]) {
            let name = format!("{stem}-test-{what}.svg");
            let path = dir.join(&name);
            crate::files::write_bytes(&path, chart.to_svg().as_bytes())?;
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
        let started = exp.runs().iter().any(|&(model, optimizer, seed)| {
            exp.run_file(out, model, optimizer, seed, "jsonl").is_file()
        });
        if !started {
            res += &format!("Not started: {} runs.\n\n<!-- end -->\n", exp.runs().len());
            done.push(file.to_string());
            continue;
        }
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
    crate::files::write_bytes(doc, res.as_bytes())?;
    Ok(done)
}
