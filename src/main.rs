//! The `ecc` command line. Errors about models exit with code 2, other failures with 1.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ecc::exec::{constant_tensor, tensor_constant, Executor};
use ecc::import::{self, tensor, ImportOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "ecc",
    version,
    about = "The equivalence-class compiler: ONNX ReLU networks, their rescaling symmetries, and EC-SGD training",
    long_about = "ecc reads a ReLU network from an ONNX file, holds it in its own IR, runs it with candle on \
the CPU and writes it back as ONNX.\n\nModel errors (a truncated or non-ONNX file, an unsupported op, \
mismatched shapes) print one line naming the file and node, and exit with code 2."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// The ONNX model file.
    model: PathBuf,
    /// Concrete dims for an input, as NAME=DxDx... (needed for inputs with symbolic
    /// non-batch dims, e.g. --input-shape input_1=1x12x12x3). Repeatable.
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shapes: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what a model holds: IR version, opsets, producer, inputs and outputs with shapes,
    /// op histogram, parameter count.
    Inspect {
        #[command(flatten)]
        m: ModelArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The symmetry analysis: which hidden units (neurons, channels) can be rescaled without
    /// changing the function, which are tied, which are blocked and by what; the counts m
    /// (trainable scalars), H (independent rescalings) and m - H (the class-space dimension).
    Analyze {
        #[command(flatten)]
        m: ModelArgs,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Print every row (the table shows 30 per section).
        #[arg(long)]
        all: bool,
        /// Add the *.rules files of DIR to the embedded rules.
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// Explain the verdict for one unit: a layer's node name (or output tensor) and a
        /// channel, e.g. --explain fc1:3. Prints the rule chain of every step.
        #[arg(long, value_name = "NODE[:CHANNEL]")]
        explain: Option<String>,
        /// Analyse BatchNormalization with batch statistics, as `ecc train` runs it (spec
        /// §11): each BN ends the rescalings that reach it (radial directions of the rows
        /// before it) and its scale and bias start new ones. Without it, BN is the
        /// per-channel affine map of inference, which rescalings pass through.
        #[arg(long)]
        training: bool,
    },
    /// Run a model forward on random inputs (or on saved ones) and print the outputs' shapes
    /// and statistics.
    Run {
        #[command(flatten)]
        m: ModelArgs,
        /// Batch size for random inputs.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Seed of the random inputs (standard normal).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Read inputs from DIR/input_K.pb (ONNX TensorProto files) instead.
        #[arg(long, value_name = "DIR")]
        inputs: Option<PathBuf>,
        /// Write the inputs and outputs as DIR/input_K.pb and DIR/output_K.pb.
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
    },
    /// Import a model and write it back as ONNX (a round trip through ecc's IR: constants
    /// folded, auto_pad resolved, attributes explicit).
    Export {
        #[command(flatten)]
        m: ModelArgs,
        /// Where to write the model.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// The EC pass: write the canonical (gauge-normalized, function-preserving) model as
    /// DIR/<stem>.ec.onnx and its EC plan (chain, star and DAG blocks, every rescaling's
    /// chain and designated scalar, every tensor's role, coverage; docs/plan-schema.md) as
    /// DIR/<stem>.ec.json, and print a summary. BatchNormalization is analysed in training
    /// mode, as `ecc train` runs it; the canonical model keeps the inference function.
    Convert {
        #[command(flatten)]
        m: ModelArgs,
        /// Output folder.
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// What to print: the plan summary, or the EC-SGD update program of every block.
        #[arg(long, value_enum, default_value = "plan")]
        emit: Emit,
    },
    /// Train a model on real data with SGD and/or EC-SGD. With no arguments: the committed
    /// digits MLP on the embedded 8x8 digits, SGD and EC-SGD side by side, and a comparison.
    Train {
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
    },
    /// Run every (optimizer, seed) of an experiment description (JSON; see
    /// experiments/*.json), writing metrics as JSON lines and checkpoints under
    /// OUT/<name>/. Finished runs are skipped and interrupted ones resume, so it can run in
    /// the background (nohup) and be started again.
    ///
    /// `ecc experiment --doc docs/results.md` regenerates the tables and plots of that
    /// document from the committed metrics (the blocks between `<!-- ecc experiment FILE -->`
    /// and `<!-- end -->`), training nothing.
    Experiment {
        #[arg(required_unless_present = "doc")]
        file: Option<PathBuf>,
        /// Results folder.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Print the results table (Markdown) from the metrics already there; train nothing.
        #[arg(long)]
        summary: bool,
        /// Write the test accuracy and loss plots (SVG) into this folder; train nothing.
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Regenerate the generated blocks of this results document; train nothing.
        #[arg(long, value_name = "DOC", conflicts_with_all = ["file", "summary", "plots"])]
        doc: Option<PathBuf>,
    },
    /// Loss and accuracy of a model on the test split of a data set.
    Eval {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long, default_value = "digits")]
        data: String,
    },
    /// List the ONNX op types ecc imports.
    Ops,
    /// Benchmarks, measured in this process (medians after a warm-up).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Write a freshly initialized model. SPEC is one of:
    ///
    /// `mlp:784-64-64-10`: dense layers with ReLU between.
    ///
    /// `cnn:1x28x28-c8-b-p-c16-p-64-10`: input CxHxW; `cK` a 3x3 conv with K channels and
    /// ReLU, `b` (right after a `cK`) BatchNormalization before that ReLU, `p` a 2x2 max
    /// pool, numbers dense layers.
    ///
    /// `resnet:3x32x32-n3`: the CIFAR ResNet of He et al. (6n+2 layers: n = 3, 5, 9 give
    /// ResNet-20, -32, -56; BN after every conv; identity shortcuts, 1x1 projections where
    /// the shape changes); options `wA.B.C` stage widths (default w16.32.64), `kK` classes
    /// (default k10). Any input of at least 4x4, e.g. resnet:1x28x28-n3 for Fashion-MNIST.
    ///
    /// `plain:3x32x32-n3`: the matching PlainNet (no shortcuts).
    New {
        spec: String,
        /// Seed of the initialization (PyTorch's default: uniform in ±1/sqrt(fan_in)).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Leave out every bias.
        #[arg(long)]
        no_bias: bool,
        /// Where to write the model.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Emit {
    Plan,
    Program,
}

#[derive(Subcommand)]
enum BenchWhat {
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
    Train {
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
        /// path-sgd, sgd-ec-init). Every other optimizer's time is also given over SGD's.
        #[arg(long, value_delimiter = ',', default_value = "sgd,ec-sgd,path-sgd")]
        optimizers: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Time of the symmetry analysis (import excluded) on the zoo models of the fixture cache
    /// and on generated plain MLPs and CNNs of 10, 100 and 1000 layers.
    Analysis {
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
    },
}

/// Set by Ctrl-C during training.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The default model of `ecc train`: models/mlp-digits.onnx, embedded.
const DEFAULT_MODEL: &[u8] = include_bytes!("../models/mlp-digits.onnx");

fn options(m: &ModelArgs) -> Result<ImportOptions> {
    let mut input_shapes = HashMap::new();
    for s in &m.input_shapes {
        let (name, dims) = s.rsplit_once('=').ok_or_else(|| {
            ecc::Error::usage(format!("--input-shape '{s}': expected NAME=DxDx..."))
        })?;
        let dims = dims
            .split('x')
            .map(|d| d.parse::<usize>().ok().filter(|&v| v > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ecc::Error::usage(format!(
                    "--input-shape '{s}': dims must be positive numbers"
                ))
            })?;
        input_shapes.insert(name.to_string(), dims);
    }
    Ok(ImportOptions { input_shapes })
}

fn load(m: &ModelArgs) -> Result<ecc::ir::Graph> {
    Ok(import::load_file(&m.model, &options(m)?)?)
}

fn stats(v: &[f32]) -> String {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let min = v.iter().copied().fold(f32::INFINITY, f32::min);
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    format!("min {min:.6} max {max:.6} mean {mean:.6}")
}

fn run(
    m: &ModelArgs,
    batch: usize,
    seed: u64,
    inputs: Option<&Path>,
    save: Option<&Path>,
) -> Result<()> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let g = load(m)?;
    let ex = Executor::new(&g)?;
    let mut xs = vec![];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (k, name) in ex.input_names().iter().enumerate() {
        let t = match inputs {
            Some(dir) => constant_tensor(
                &tensor::read_pb(&dir.join(format!("input_{k}.pb")))?,
                ex.device(),
            )?,
            None => {
                let dims = ex.input_shape(k).with_batch(batch);
                ecc::ir::Shape::fixed(dims.clone())
                    .check(&format!("input '{name}' with --batch {batch}"))?;
                let n: usize = dims.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|_| rand_distr::StandardNormal.sample(&mut rng))
                    .collect();
                candle_core::Tensor::from_vec(v, dims, ex.device())?
            }
        };
        println!("input  {name:<24} {:?}", t.dims());
        xs.push(t);
    }
    let ys = ex.forward(&xs)?;
    if let Some(dir) = save {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (k, (t, name)) in xs.iter().zip(ex.input_names()).enumerate() {
            tensor::write_pb(
                &dir.join(format!("input_{k}.pb")),
                name,
                &tensor_constant(t)?,
            )?;
        }
        for (k, (t, name)) in ys.iter().zip(ex.output_names()).enumerate() {
            tensor::write_pb(
                &dir.join(format!("output_{k}.pb")),
                name,
                &tensor_constant(t)?,
            )?;
        }
    }
    for (t, name) in ys.iter().zip(ex.output_names()) {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        println!("output {name:<24} {:?} {}", t.dims(), stats(&v));
    }
    Ok(())
}

fn main_inner(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Inspect { m, json } => {
            let g = load(&m)?;
            let r = ecc::inspect::Report::new(&m.model.display().to_string(), &g);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.to_text());
            }
        }
        Cmd::Analyze {
            m,
            json,
            all,
            rules,
            explain,
            training,
        } => {
            let g = load(&m)?;
            let mut set = ecc::analysis::RuleSet::default_rules();
            if let Some(dir) = rules {
                set.load_dir(&dir)?;
            }
            let mode = if training {
                ecc::analysis::BnMode::Training
            } else {
                ecc::analysis::BnMode::Inference
            };
            let a = ecc::analysis::analyze_in(&g, &set, mode);
            if let Some(spec) = explain {
                print!("{}", ecc::analysis::report::explain(&g, &a, &spec)?);
            } else {
                let r = ecc::analysis::report::Report::new(&m.model.display().to_string(), &g, &a);
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", r.to_text(if all { 0 } else { 30 }));
                }
            }
        }
        Cmd::Run {
            m,
            batch,
            seed,
            inputs,
            save,
        } => run(&m, batch, seed, inputs.as_deref(), save.as_deref())?,
        Cmd::Export { m, output } => {
            let g = load(&m)?;
            ecc::export::write_file(&g, &output)?;
            println!(
                "wrote {} ({} nodes, {} parameters)",
                output.display(),
                g.nodes.len(),
                g.param_count()
            );
        }
        Cmd::Bench {
            what: BenchWhat::Analysis { zoo, runs, json },
        } => {
            let zoo =
                zoo.or_else(|| Some(ecc::fixture_dir().join("onnx/light")).filter(|d| d.is_dir()));
            if zoo.is_none() && !json {
                println!("(no zoo models: run scripts/fetch-fixtures.sh or pass --zoo DIR)");
            }
            if !json {
                println!(
                    "{:<24} {:>6} {:>7} {:>10} {:>10} {:>9}",
                    "model", "nodes", "units", "rescalings", "ms", "µs/node"
                );
            }
            let cases = ecc::bench::analysis(zoo.as_deref(), runs, |c| {
                if !json {
                    println!(
                        "{:<24} {:>6} {:>7} {:>10} {:>10.2} {:>9.1}",
                        c.name, c.nodes, c.units, c.rescalings, c.ms, c.us_per_node
                    );
                }
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "analysis": cases }))?
                );
            }
        }
        Cmd::Convert { m, output, emit } => {
            let g = load(&m)?;
            let conv = ecc::ec::convert(&g);
            let canon = &conv.canon;
            let stem = m
                .model
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into());
            std::fs::create_dir_all(&output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let onnx = output.join(format!("{stem}.ec.onnx"));
            let json = output.join(format!("{stem}.ec.json"));
            ecc::export::write_file(canon, &onnx)?;
            let r = conv.report(&m.model.display().to_string(), &g);
            let tmp = json.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&r)?)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &json)?;
            match emit {
                Emit::Plan => print!("{}", r.summary()),
                Emit::Program => {
                    for (i, b) in conv.basis.blocks.iter().enumerate() {
                        print!("{}", ecc::ec::program::text(i, b));
                    }
                }
            }
            println!("wrote        {} and {}", onnx.display(), json.display());
        }
        Cmd::Train {
            model,
            data,
            optimizer,
            epochs,
            batch,
            lr,
            schedule,
            momentum,
            weight_decay,
            seed,
            keep_function,
            metrics,
            checkpoint,
            resume,
            output,
            augment,
        } => {
            use ecc::train::{train_with, Hooks, OptimizerKind, Schedule, TrainConfig};
            // Every numeric option and every output folder before any work.
            ecc::train::check_options(epochs, batch, lr, momentum, weight_decay)?;
            for (flag, p) in [
                ("-o", &output),
                ("--checkpoint", &checkpoint),
                ("--metrics", &metrics),
            ] {
                if let Some(p) = p {
                    check_output_folder(flag, p)?;
                }
            }
            // Ctrl-C: finish the current step, write the checkpoint, stop.
            let _ = ctrlc::set_handler(|| STOP.store(true, std::sync::atomic::Ordering::SeqCst));
            let g = match &model {
                Some(p) => import::load_file(p, &ImportOptions::default())?,
                None => import::load_bytes(DEFAULT_MODEL, &ImportOptions::default())?,
            };
            let split = ecc::data::load(&data)?;
            let kinds = match optimizer.as_str() {
                "both" => vec![OptimizerKind::Sgd, OptimizerKind::EcSgd],
                "compare" => vec![
                    OptimizerKind::Sgd,
                    OptimizerKind::EcSgd,
                    OptimizerKind::SgdEcInit,
                ],
                "all" => OptimizerKind::ALL.to_vec(),
                one => match OptimizerKind::from_name(one) {
                    Some(k) => vec![k],
                    None => {
                        return Err(ecc::Error::usage(format!(
                        "--optimizer '{one}': sgd, ec-sgd, path-sgd, sgd-ec-init, both, compare or all"
                    ))
                        .into())
                    }
                },
            };
            if (output.is_some() || checkpoint.is_some()) && kinds.len() > 1 {
                return Err(ecc::Error::usage(
                    "-o and --checkpoint are for one optimizer: choose --optimizer sgd, ec-sgd, path-sgd or sgd-ec-init",
                )
                .into());
            }
            let schedule = Schedule::parse(&schedule)?;
            let name = model
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "models/mlp-digits.onnx (embedded)".into());
            println!("model {name}, data {} ({} train / {} test), {epochs} epochs, batch {batch}, lr {lr}", split.name, split.train.len(), split.test.len());
            // A resumed run adds its epochs to the metrics of the interrupted one.
            let mut sink = match &metrics {
                Some(p) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(resume)
                        .write(true)
                        .truncate(!resume)
                        .open(p)
                        .map_err(|e| {
                            ecc::Error::new(ecc::ErrorKind::Io(format!(
                                "cannot write the metrics: {e}"
                            )))
                            .in_file(p)
                        })?,
                ),
                None => None,
            };
            // A metrics line that cannot be written stops the run (its checkpoint is kept).
            let write_error: std::cell::RefCell<Option<String>> = std::cell::RefCell::new(None);
            let mut rows = vec![];
            if keep_function && kinds.contains(&OptimizerKind::EcSgd) {
                // EC-SGD's step on a weight scales as lr / V² (spec §5), and V (a class
                // invariant) is tiny in trained networks: say so before a long run diverges.
                let tg = ecc::train::logits_graph(&g);
                let r = ecc::ec::convert(&tg).report("", &tg);
                if let Some(med) = r.blocks.iter().map(|b| b.v_abs[1]).reduce(f64::min) {
                    if med < 1e-2 {
                        println!(
                            "note: from the canonical form, |V| has median {med:.1e}: EC-SGD's steps scale as lr/V², \
                             so lr {lr} acts like {:.1e}; lr around {:.0e} times your usual one may be needed",
                            lr / (med * med),
                            med * med
                        );
                    }
                }
            }
            for kind in kinds {
                let cfg = TrainConfig {
                    optimizer: kind,
                    epochs,
                    batch,
                    lr,
                    schedule,
                    momentum,
                    weight_decay,
                    seed,
                    skeleton_init: !keep_function,
                    checkpoint: checkpoint.clone(),
                    resume,
                    augment,
                };
                let bar =
                    std::cell::RefCell::new(None::<(indicatif::ProgressBar, std::time::Instant)>);
                let label = kind.name().to_string();
                let hooks = Hooks {
                    on_step: Box::new(|i| {
                        let mut b = bar.borrow_mut();
                        let (pb, t0) = b.get_or_insert_with(|| {
                            let pb = indicatif::ProgressBar::new(i.samples_total as u64);
                            let style = indicatif::ProgressStyle::with_template(
                                "  {prefix} [{bar:30}] {pos}/{len} {msg}",
                            )
                            .expect("a valid template")
                            .progress_chars("=> ");
                            pb.set_style(style);
                            pb.set_prefix(format!("{label:<7} epoch {:>3}", i.epoch));
                            (pb, std::time::Instant::now())
                        });
                        pb.set_position(i.samples as u64);
                        let rate = i.samples as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                        pb.set_message(format!(
                            "loss {:.4} acc {:.4} {rate:.0} samples/s",
                            i.loss, i.accuracy
                        ));
                    }),
                    on_epoch: Box::new(|m| {
                        if let Some((pb, _)) = bar.borrow_mut().take() {
                            pb.finish_and_clear();
                        }
                        println!(
                            "  {:<7} epoch {:>3}  train loss {:.4}  test loss {:.4}  test acc {:.4}  {:.2}s",
                            label, m.epoch, m.train_loss, m.test_loss, m.test_accuracy, m.seconds
                        );
                        if let Some(f) = sink.as_mut() {
                            use std::io::Write;
                            let line = serde_json::to_string(m).unwrap_or_default();
                            if let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush()) {
                                *write_error.borrow_mut() = Some(e.to_string());
                                STOP.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    }),
                    stop: Some(&STOP),
                };
                let result = train_with(&g, &split, &cfg, hooks);
                if let (Some(e), Some(p)) = (write_error.borrow().clone(), &metrics) {
                    return Err(ecc::Error::new(ecc::ErrorKind::Io(format!(
                        "cannot write the metrics: {e} (training stopped)"
                    )))
                    .in_file(p)
                    .into());
                }
                let (trained, hist) = result?;
                if hist.is_empty() {
                    println!(
                        "  {label:<7} the checkpoint's run has finished all {epochs} epochs: nothing to do (nothing written)"
                    );
                    continue;
                }
                if let Some(o) = &output {
                    ecc::export::write_file(&trained, o)?;
                    println!("wrote {}", o.display());
                }
                rows.push(hist);
            }
            println!(
                "\n{:<11} {:>9} {:>9} {:>9} {:>10} {:>8}",
                "optimizer", "test acc", "best acc", "test loss", "s/epoch", "guarded"
            );
            for h in rows.iter().filter(|h| !h.is_empty()) {
                let last = h.last().expect("not empty");
                let best = h.iter().map(|m| m.test_accuracy).fold(0.0, f64::max);
                let secs = h.iter().map(|m| m.seconds).sum::<f64>() / h.len() as f64;
                let name = last.optimizer.name();
                println!(
                    "{name:<11} {:>9.4} {best:>9.4} {:>9.4} {secs:>10.3} {:>8}",
                    last.test_accuracy, last.test_loss, last.guarded_steps
                );
            }
        }
        Cmd::Experiment {
            file,
            out,
            summary,
            plots,
            doc,
        } => {
            if let Some(doc) = doc {
                for f in ecc::experiment::update_doc(&doc, &out)? {
                    println!("{}: regenerated the block of {f}", doc.display());
                }
                return Ok(());
            }
            let file = file.expect("clap requires FILE without --doc");
            let exp = ecc::experiment::Experiment::load(&file)?;
            if summary || plots.is_some() {
                if summary {
                    print!("{}", ecc::experiment::summary(&exp, &out)?);
                }
                if let Some(dir) = plots {
                    for name in ecc::experiment::write_plots(&exp, &out, &dir)? {
                        println!("wrote {}", dir.join(name).display());
                    }
                }
                return Ok(());
            }
            println!(
                "experiment {}: {} optimizers x {} seeds x {} epochs",
                exp.name,
                exp.optimizers.len(),
                exp.seeds.len(),
                exp.epochs
            );
            // Ctrl-C: the current run stops after its step with its checkpoint written (the
            // same command resumes it), as in `ecc train`.
            let _ = ctrlc::set_handler(|| STOP.store(true, std::sync::atomic::Ordering::SeqCst));
            let runs = ecc::experiment::run(&exp, &out, Some(&STOP), |run, m| {
                println!(
                    "  {run:<18} epoch {:>4}  test loss {:.4}  test acc {:.4}  {:.2}s",
                    m.epoch, m.test_loss, m.test_accuracy, m.seconds
                );
            })?;
            for r in runs.iter().filter(|r| r.diverged.is_some()) {
                println!(
                    "  {} {} seed {}: diverged: {}",
                    r.model,
                    r.optimizer.name(),
                    r.seed,
                    r.diverged.as_deref().unwrap_or("")
                );
            }
            let fresh = runs.iter().filter(|r| r.trained > 0).count();
            println!(
                "{} runs complete ({fresh} trained now) in {}",
                runs.len(),
                out.join(&exp.name).display()
            );
        }
        Cmd::Eval { m, data } => {
            let g = ecc::train::logits_graph(&load(&m)?);
            let split = ecc::data::load(&data)?;
            let ex = Executor::new(&g)?;
            let (loss, acc) = ecc::train::evaluate(&ex, &g, &split.test, 512)?;
            println!(
                "{}: {} test samples, loss {loss:.4}, accuracy {acc:.4}",
                split.name,
                split.test.len()
            );
        }
        Cmd::Bench {
            what:
                BenchWhat::Train {
                    runs,
                    case,
                    model,
                    batch,
                    optimizers,
                    json,
                },
        } => {
            let kinds = optimizers
                .iter()
                .map(|o| {
                    ecc::train::OptimizerKind::from_name(o).ok_or_else(|| {
                        let names = ecc::train::OptimizerKind::ALL.map(|k| k.name());
                        ecc::Error::usage(format!("--optimizers '{o}': {}", names.join(", ")))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let models = match &model {
                Some(p) => vec![ecc::bench::model_file(p, batch)?],
                None => ecc::bench::train_cases(case.as_deref())?,
            };
            let mut header = !json;
            let (cases, ratios) = ecc::bench::train_steps(runs, &models, &kinds, |c| {
                if std::mem::take(&mut header) {
                    println!(
                        "{:<20} {:<8} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7} {:>6} {:>8} {:>7}",
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
                if !json {
                    println!(
                        "{:<20} {:<8} {:>6} {:>9} {:>8.3} {:>7.3} {:>7.3} {:>7.3} {:>6.3} {:>8.1} {:>6.0}M",
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
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "cases": cases, "ratios": ratios })
                    )?
                );
            } else {
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
        }
        Cmd::Ops => {
            for op in ecc::import::op_names() {
                println!("{op}");
            }
        }
        Cmd::New {
            spec,
            seed,
            no_bias,
            output,
        } => {
            let s = ecc::zoo::Spec::parse(&spec)?;
            let g = ecc::zoo::build(&s, seed, !no_bias)?;
            ecc::export::write_file(&g, &output)?;
            println!(
                "wrote {} ({spec}, {} parameters)",
                output.display(),
                g.param_count()
            );
        }
    }
    Ok(())
}

fn main() {
    // Exit quietly when the reader of stdout goes away (`ecc analyze m.onnx | head`), as
    // command-line tools do, instead of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Training allocates the same large buffers every step. glibc serves blocks above its
    // mmap threshold with fresh mappings, so each step would page-fault its buffers in again
    // (measured: a CNN step twice as slow in a fresh process); keep them on the heap instead.
    // SAFETY: mallopt only tunes the allocator; called before any allocation-heavy work.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    ecc::exec::join_thread_pool();
    let cli = Cli::parse();
    if let Err(e) = main_inner(cli) {
        eprintln!("error: {e:#}");
        let code = match e.downcast_ref::<ecc::Error>() {
            Some(ecc::Error {
                kind: ecc::ErrorKind::Interrupted(_),
                ..
            }) => 130,
            Some(_) => 2,
            None => 1,
        };
        std::process::exit(code);
    }
}

/// An output file's folder must exist before a long run starts, not after it.
fn check_output_folder(flag: &str, path: &std::path::Path) -> ecc::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ecc::Error::usage(format!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(ecc::Error::usage(format!(
            "{flag} {}: is a folder, not a file",
            path.display()
        )));
    }
    Ok(())
}
