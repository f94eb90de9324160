//! `ecc bench`: timings measured in one process, reported as medians after a warm-up,
//! never asserted by tests.

use crate::analysis::{analyze, RuleSet};
use crate::error::Result;
use crate::ir::Graph;
use crate::zoo::{build, Spec};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct AnalysisCase {
    pub name: String,
    pub nodes: usize,
    pub units: usize,
    pub rescalings: usize,
    /// Median wall time of `analyze` (import excluded), milliseconds.
    pub ms: f64,
    pub us_per_node: f64,
}

/// Median of `runs` timings of `f`, after one warm-up call.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).expect("finite timings"));
    t[t.len() / 2]
}

fn case(name: &str, g: &Graph, rules: &RuleSet, runs: usize) -> AnalysisCase {
    let a = analyze(g, rules);
    let ms = median_ms(runs, || {
        std::hint::black_box(analyze(g, rules));
    });
    AnalysisCase {
        name: name.to_string(),
        nodes: g.nodes.len(),
        units: a.unit_count(),
        rescalings: a.rescalings(),
        ms,
        us_per_node: ms * 1e3 / g.nodes.len() as f64,
    }
}

/// Analysis time of the zoo models found in `zoo` (if any) and of plain MLPs and CNNs of
/// 10, 100 and 1000 layers.
pub fn analysis(
    zoo: Option<&Path>,
    runs: usize,
    mut progress: impl FnMut(&AnalysisCase),
) -> Result<Vec<AnalysisCase>> {
    let rules = RuleSet::default_rules();
    let mut out = vec![];
    if let Some(dir) = zoo {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| crate::Error::new(crate::ErrorKind::Io(e.to_string())).in_file(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        files.sort();
        for f in files {
            let g = crate::import::load_file(&f, &Default::default())?;
            let name = f
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            out.push(case(&name, &g, &rules, runs));
            progress(out.last().expect("pushed"));
        }
    }
    for layers in [10, 100, 1000] {
        let mlp = format!("mlp:64-{}10", "64-".repeat(layers - 1));
        let cnn = format!("cnn:4x8x8-{}p-10", "c8-".repeat(layers - 1));
        for (kind, spec) in [("mlp", mlp), ("cnn", cnn)] {
            let g = build(&Spec::parse(&spec)?, 0, true)?;
            out.push(case(&format!("{kind}-{layers}-layers"), &g, &rules, runs));
            progress(out.last().expect("pushed"));
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct StepCase {
    pub name: String,
    pub optimizer: String,
    pub batch: usize,
    pub params: usize,
    /// Median wall time of one training step (forward, loss, backward, optimizer step).
    pub ms_per_step: f64,
    /// Medians of its phases: forward with the loss, backward (the gradients), and the
    /// optimizer's update. Each is a median on its own, so they need not add up exactly.
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub update_ms: f64,
    /// Matmul work of one step in GFLOP: forward 2·B·Σ(in·out) per dense or conv layer,
    /// backward twice that, less the input gradient of the first layer (never computed).
    pub gflop: f64,
    /// Peak resident memory of this process so far (MiB, VmHWM), after this case ran. Run
    /// one case per process (`--case`) to read it per case.
    pub max_rss_mib: Option<f64>,
}

/// Peak resident set size of this process in MiB (Linux: VmHWM in /proc/self/status).
pub fn max_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Multiply-adds per sample of the dense and conv layers of a graph, the first layer's
/// separately (its input gradient is not computed).
fn macs_per_sample(g: &Graph) -> (f64, f64) {
    use crate::ir::Op;
    let mut layers = vec![];
    for l in g.weight_layers() {
        let n = &g.nodes[l.node];
        let weights: usize = g.params[l.weight].dims.iter().product();
        // Dense: one MAC per weight; conv: per weight and output position; transposed
        // conv: per weight and input position.
        let positions: usize = match n.op {
            Op::Conv(_) => g.shapes[&n.outputs[0]].dims[2..].iter().product(),
            Op::ConvTranspose(_) => g.shapes[&n.inputs[0]].dims[2..].iter().product(),
            _ => 1,
        };
        layers.push((weights * positions) as f64);
    }
    let first = layers.first().copied().unwrap_or(0.0);
    (layers.iter().sum(), first)
}

#[derive(Debug, Serialize)]
pub struct StepRatio {
    pub name: String,
    pub optimizer: String,
    /// This optimizer's step time over SGD's, medians measured interleaved.
    pub over_sgd: f64,
}

/// Steps an optimizer makes in a row in [`train_steps`] before the next one's turn.
pub const BLOCK: usize = 10;

/// The cases of [`train_steps`]: (name, model spec, biases, batch).
pub const TRAIN_CASES: [(&str, &str, bool, usize); 4] = [
    ("mlp-784-64x4-10", "mlp:784-64-64-64-64-10", false, 64),
    ("mlp-784-512-512-10", "mlp:784-512-512-10", true, 128),
    ("cnn-28x28", "cnn:1x28x28-c8-p-c16-p-32-10", true, 64),
    ("resnet20-32x32", "resnet:3x32x32-n3", true, 128),
];

/// A model to time: a name, the (logits) graph and the batch size.
pub struct StepModel {
    pub name: String,
    pub graph: Graph,
    pub batch: usize,
}

/// The models of [`TRAIN_CASES`], or the one named `only`.
pub fn train_cases(only: Option<&str>) -> Result<Vec<StepModel>> {
    if let Some(o) = only {
        if !TRAIN_CASES.iter().any(|c| c.0 == o) {
            let names: Vec<&str> = TRAIN_CASES.iter().map(|c| c.0).collect();
            return Err(crate::Error::usage(format!(
                "no bench case '{o}' (cases: {})",
                names.join(", ")
            )));
        }
    }
    TRAIN_CASES
        .iter()
        .filter(|c| only.is_none_or(|o| o == c.0))
        .map(|&(name, spec, bias, batch)| {
            Ok(StepModel {
                name: name.into(),
                graph: build(&Spec::parse(spec)?, 0, bias)?,
                batch,
            })
        })
        .collect()
}

/// A model file to time (a trailing Softmax dropped, as for training), at batch `batch`.
pub fn model_file(path: &Path, batch: usize) -> Result<StepModel> {
    if batch == 0 {
        return Err(crate::Error::usage("--batch must be at least 1"));
    }
    let g = crate::import::load_file(path, &Default::default())?;
    let graph = crate::train::logits_graph(&g);
    if graph.inputs.len() != 1 || graph.outputs.len() != 1 {
        return Err(crate::Error::unsupported(
            "timing training needs a model with one input and one output",
        )
        .in_file(path));
    }
    Ok(StepModel {
        name: path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string(),
        graph,
        batch,
    })
}

/// Training-step times of `optimizers`, interleaved in blocks of [`BLOCK`] steps in one
/// process, on each of `models` (random inputs, labels drawn from the output's classes). The
/// passes run in training mode (BatchNormalization with batch statistics). With SGD among
/// the optimizers, every other optimizer's time over SGD's is reported too.
pub fn train_steps(
    runs: usize,
    models: &[StepModel],
    optimizers: &[crate::train::OptimizerKind],
    mut progress: impl FnMut(&StepCase),
) -> Result<(Vec<StepCase>, Vec<StepRatio>)> {
    use crate::train::{optimizer_for, OptimizerKind, TrainConfig};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    let (mut out, mut ratios) = (vec![], vec![]);
    if optimizers.is_empty() {
        return Err(crate::Error::usage("no optimizer to time"));
    }
    for m in models {
        let (name, g, batch) = (m.name.as_str(), &m.graph, m.batch);
        let classes = g.shapes[&g.outputs[0].name].dims[1..]
            .iter()
            .product::<usize>()
            .max(1);
        let (macs, first) = macs_per_sample(g);
        let gflop = 2.0 * batch as f64 * (3.0 * macs - first) / 1e9;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let dims = g.shapes[&g.inputs[0].name].with_batch(batch);
        let n: usize = dims.iter().product();
        let x = Tensor::from_vec(
            (0..n).map(|_| rng.gen_range(0f32..1.0)).collect::<Vec<_>>(),
            dims,
            &Device::Cpu,
        )?;
        let y = Tensor::from_vec(
            (0..batch)
                .map(|_| rng.gen_range(0..classes as u32))
                .collect::<Vec<_>>(),
            batch,
            &Device::Cpu,
        )?;
        let mut runners = vec![];
        for &kind in optimizers {
            let cfg = TrainConfig {
                optimizer: kind,
                epochs: 1,
                batch,
                lr: 1e-3,
                ..Default::default()
            };
            let (start, opt) = optimizer_for(g, &cfg)?;
            let times: Vec<[f64; 4]> = vec![];
            runners.push((kind, crate::exec::Executor::new(&start)?, opt, times));
        }
        let step = |ex: &crate::exec::Executor,
                    opt: &mut Box<dyn crate::train::optim::Optimizer>|
         -> Result<[f64; 4]> {
            Ok(crate::train::step(ex, opt.as_mut(), &x, &y, 0, 1e-3)?.ms)
        };
        for (_, ex, opt, _) in runners.iter_mut() {
            for _ in 0..3 {
                step(ex, opt)?;
            }
        }
        // Interleaved in blocks of BLOCK steps, the order rotated every round, so that no
        // optimizer always runs right after the same other one; drifts of the machine's
        // speed reach all of them alike. Within a block a model steps on warm caches, as in
        // training (one model per run); interleaving single steps instead would time every
        // step right after another model's, with the caches full of that model's buffers.
        let k = runners.len();
        let rounds = runs.max(1).div_ceil(BLOCK);
        for round in 0..rounds {
            for j in 0..k {
                let (_, ex, opt, times) = &mut runners[(round + j) % k];
                for _ in 0..BLOCK.min(runs.max(1) - round * BLOCK) {
                    times.push(step(ex, opt)?);
                }
            }
        }
        let mut medians = vec![];
        for (kind, _, _, times) in runners.iter_mut() {
            let median = |i: usize| {
                let mut t: Vec<f64> = times.iter().map(|t| t[i]).collect();
                t.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
                t[t.len() / 2]
            };
            let m = median(0);
            medians.push(m);
            let c = StepCase {
                name: name.into(),
                optimizer: kind.name().into(),
                batch,
                params: g.param_count(),
                ms_per_step: m,
                forward_ms: median(1),
                backward_ms: median(2),
                update_ms: median(3),
                gflop,
                max_rss_mib: max_rss_mib(),
            };
            progress(&c);
            out.push(c);
        }
        let sgd = optimizers.iter().position(|&k| k == OptimizerKind::Sgd);
        for (i, kind) in optimizers.iter().enumerate() {
            if let Some(s) = sgd.filter(|&s| s != i) {
                ratios.push(StepRatio {
                    name: name.into(),
                    optimizer: kind.name().into(),
                    over_sgd: medians[i] / medians[s],
                });
            }
        }
    }
    Ok((out, ratios))
}
