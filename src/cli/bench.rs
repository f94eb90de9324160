//! `ecc bench`: training-step and analysis benchmarks, measured in this process.

use anyhow::Result;
use ecc::bench::{StepCase, StepRatio};
use ecc::train::OptimizerKind;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum What {
    /// Training-step time (forward, loss, backward, optimizer step) of SGD, EC-SGD, Path-SGD,
    /// interleaved in blocks of 10 steps, median of --runs steps after a warm-up: MLP
    /// 784-64-64-64-64-10 (batch 64), MLP 784-512-512-10 (batch 128), a plain CNN on 28x28
    /// (batch 64), ResNet-20 with BatchNorm on 3x32x32 (batch 128); or your own model with
    /// --model FILE [--batch B] (random inputs, training mode).
    ///
    /// Also reported: the medians of the step's phases in ms (forward with the loss, backward,
    /// the optimizer's update), the matmul work of a step (GFLOP) and the peak memory (max RSS)
    /// of the process after each case; run one case per process with --case for per-case memory.
    /// scripts/peer-bench.sh runs the same cases in PyTorch, alternating, for ratios.
    Train(TrainArgs),
    /// Time of the symmetry analysis (import excluded) on the zoo models of the fixture cache
    /// and on generated plain MLPs and CNNs of 10, 100 and 1000 layers.
    Analysis(AnalysisArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Timed steps per optimizer.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Run only this case (mlp-784-64x4-10, mlp-784-512-512-10, cnn-28x28 or
    /// resnet20-32x32).
    #[arg(long, conflicts_with = "model")]
    case: Option<String>,
    /// Time this model instead of the cases (one input with a leading batch axis, one
    /// output; a trailing Softmax is dropped, as in training).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// The batch size for --model.
    #[arg(long, default_value_t = 64, requires = "model")]
    batch: usize,
    /// The optimizers to time, in turns of 10 steps each (comma-separated: sgd, ec-sgd,
    /// path-sgd, sgd-ec-init, balanced-sgd, gsgd-ref). Every other optimizer's time is also given over SGD's.
    #[arg(long, value_delimiter = ',', default_value = "sgd,ec-sgd,path-sgd")]
    optimizers: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AnalysisArgs {
    /// Folder of zoo models (default: the light models of scripts/fetch-fixtures.sh's cache,
    /// if present).
    #[arg(long, value_name = "DIR")]
    zoo: Option<PathBuf>,
    /// Timed runs per case.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Train(a) => train(a),
        What::Analysis(a) => analysis(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    if a.runs == 0 || a.batch == 0 {
        return Err(ecc::Error::usage("--runs and --batch must be at least 1").into());
    }
    let kinds = a
        .optimizers
        .iter()
        .map(|o| {
            OptimizerKind::from_name(o).ok_or_else(|| {
                let names = OptimizerKind::ALL.map(|k| k.name());
                ecc::Error::usage(format!("--optimizers '{o}': {}", names.join(", ")))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let models = match &a.model {
        Some(p) => vec![ecc::bench::model_file(p, a.batch)?],
        None => ecc::bench::train_cases(a.case.as_deref())?,
    };
    let mut header = !a.json;
    let (cases, ratios) = ecc::bench::train_steps(a.runs, &models, &kinds, |c| {
        if std::mem::take(&mut header) {
            println!(
                "{:<20} {:<12} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7}",
                "case",
                "optimizer",
                "batch",
                "params",
                "ms/step",
                "fwd",
                "bwd",
                "update",
                "GFLOP",
                "GFLOP/s",
                "maxRSS"
            );
        }
        if !a.json {
            print_case(c);
        }
    })?;
    if a.json {
        let v = serde_json::json!({ "cases": cases, "ratios": ratios });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_ratios(&ratios);
    }
    Ok(())
}

fn print_case(c: &StepCase) {
    println!(
        "{:<20} {:<12} {:>6} {:>9} {:>8.3} {:>7.3} {:>7.3} {:>7.3} {:>6.3} {:>8.1} {:>6.0}M",
        c.name,
        c.optimizer,
        c.batch,
        c.params,
        c.ms_per_step,
        c.forward_ms,
        c.backward_ms,
        c.update_ms,
        c.gflop,
        c.gflop / c.ms_per_step * 1e3,
        c.max_rss_mib.unwrap_or(f64::NAN)
    );
}

fn print_ratios(ratios: &[StepRatio]) {
    let mut names: Vec<&str> = ratios.iter().map(|r| r.name.as_str()).collect();
    names.dedup();
    for name in names {
        let parts: Vec<String> = ratios
            .iter()
            .filter(|r| r.name == name)
            .map(|r| format!("{} {:.3}", r.optimizer, r.over_sgd))
            .collect();
        println!("{name:<20} step time over SGD: {}", parts.join(", "));
    }
}

fn analysis(a: AnalysisArgs) -> Result<()> {
    let zoo = a
        .zoo
        .or_else(|| Some(ecc::fixture_dir().join("onnx/light")).filter(|d| d.is_dir()));
    if zoo.is_none() && !a.json {
        println!("(no zoo models: run scripts/fetch-fixtures.sh or pass --zoo DIR)");
    }
    if !a.json {
        println!(
            "{:<24} {:>6} {:>7} {:>10} {:>10} {:>9}",
            "model", "nodes", "units", "rescalings", "ms", "µs/node"
        );
    }
    let cases = ecc::bench::analysis(zoo.as_deref(), a.runs, |c| {
        if !a.json {
            println!(
                "{:<24} {:>6} {:>7} {:>10} {:>10.2} {:>9.1}",
                c.name, c.nodes, c.units, c.rescalings, c.ms, c.us_per_node
            );
        }
    })?;
    if a.json {
        let v = serde_json::json!({ "analysis": cases });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
