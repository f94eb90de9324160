//! The command line. One module per command, each with its clap `Args` and its `run`;
//! [`common`] holds what several commands share (the model arguments, the checks of every
//! option before any work, Ctrl-C). No command reaches into a stage's internals: each calls
//! the library's public functions and prints what they return.
//!
//! Errors and exit codes (the one place they are decided): every failure is one line
//! `error: ...` on stderr. An [`ecc::Error`] (a model, data file, checkpoint, rules file or
//! option that is wrong, or a file that cannot be written) exits with 2; an interrupted run
//! (Ctrl-C, checkpoint written) with 130; anything else with 1. Malformed arguments (clap's
//! errors) are one line too and exit with 2; `--help` and `--version` exit with 0.

mod analyze;
mod bench;
mod common;
mod convert;
mod eval;
mod experiment;
mod export;
mod inspect;
mod new;
mod ops;
mod run;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ecc",
    version = concat!(env!("CARGO_PKG_VERSION"), " (build ", env!("ECC_BUILD"), ")"),
    about = "The equivalence-class compiler: ONNX ReLU networks, their rescaling symmetries, and EC-SGD training",
    long_about = "ecc reads a ReLU network from an ONNX file, holds it in its own IR, runs it with candle on \
the CPU and writes it back as ONNX.\n\nModel errors (a truncated or non-ONNX file, an unsupported op, \
mismatched shapes) print one line naming the file and node, and exit with code 2."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what a model holds: IR version, opsets, producer, inputs and outputs with shapes,
    /// op histogram, parameter count.
    Inspect(inspect::Args),
    /// The symmetry analysis: which hidden units (neurons, channels) can be rescaled without
    /// changing the function, which are tied, which are blocked and by what; the counts m
    /// (trainable scalars), H (independent rescalings) and m - H (the class-space dimension).
    Analyze(analyze::Args),
    /// Run a model forward on random inputs (or on saved ones) and print the outputs' shapes
    /// and statistics.
    Run(run::Args),
    /// Import a model and write it back as ONNX (a round trip through ecc's IR: constants
    /// folded, auto_pad resolved, attributes explicit).
    Export(export::Args),
    /// The EC pass: write the canonical (gauge-normalized, function-preserving) model as
    /// DIR/<stem>.ec.onnx and its EC plan (chain, star and DAG blocks, every rescaling's
    /// chain and designated scalar, every tensor's role, coverage; docs/plan-schema.md) as
    /// DIR/<stem>.ec.json, and print a summary. BatchNormalization is analysed in training
    /// mode, as `ecc train` runs it; the canonical model keeps the inference function.
    Convert(convert::Args),
    /// Train a model on real data with SGD, EC-SGD and the other optimizers. With no
    /// arguments: the committed digits MLP on the embedded 8x8 digits, SGD and EC-SGD side
    /// by side, and a comparison. A model that is already trained is fine-tuned: SGD and
    /// balanced SGD from its own function at a smaller step, unless options say otherwise.
    Train(train::Args),
    /// Run every (optimizer, seed) of an experiment description (JSON; see
    /// experiments/*.json), writing metrics as JSON lines and checkpoints under
    /// OUT/<name>/. Finished runs are skipped and interrupted ones resume, so it can run in
    /// the background (nohup) and be started again. Several processes on one description
    /// share its runs: each run is locked by the process training it (OUT/<name>/<run>.lock,
    /// released when that process ends) and skipped by the others.
    ///
    /// `ecc experiment --doc docs/results.md` regenerates the tables and plots of that
    /// document from the committed metrics (the blocks between `<!-- ecc experiment FILE -->`
    /// and `<!-- end -->`), training nothing.
    Experiment(experiment::Args),
    /// Loss and accuracy of a model on the test split of a data set.
    Eval(eval::Args),
    /// List the ONNX op types ecc imports.
    Ops,
    /// Benchmarks, measured in this process (medians after a warm-up).
    Bench {
        #[command(subcommand)]
        what: bench::What,
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
    /// (default k10), `nobn` without BatchNormalization. Any input of at least 4x4, e.g.
    /// resnet:1x28x28-n3 for Fashion-MNIST.
    ///
    /// `plain:3x32x32-n3`: the matching PlainNet (no shortcuts).
    New(new::Args),
}

/// Parse the command line, run the command, and return the process's exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.cmd {
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Analyze(a) => analyze::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Export(a) => export::run(a),
        Cmd::Convert(a) => convert::run(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Experiment(a) => experiment::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Ops => ops::run(),
        Cmd::Bench { what } => bench::run(what),
        Cmd::New(a) => new::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// Clap's errors in the one-line form of ecc's own (exit 2); help and version as clap
/// prints them.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("error: invalid arguments");
    eprintln!("{first} (see --help)");
    2
}

/// The exit code of a failure (see the module doc).
fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<ecc::Error>() {
        Some(ecc::Error {
            kind: ecc::ErrorKind::Interrupted(_),
            ..
        }) => 130,
        Some(_) => 2,
        None => 1,
    }
}
