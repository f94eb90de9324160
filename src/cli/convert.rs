//! `ecc convert`: the EC pass, writing the canonical model and its plan.

use super::common::ModelArgs;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: ModelArgs,
    /// Output folder.
    #[arg(short, long, default_value = ".")]
    output: PathBuf,
    /// What to print: the plan summary, or the EC-SGD update program of every block.
    #[arg(long, value_enum, default_value = "plan")]
    emit: Emit,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Emit {
    Plan,
    Program,
}

pub fn run(a: Args) -> Result<()> {
    let g = a.m.load()?;
    let conv = ecc::ec::convert(&g);
    let stem =
        a.m.model
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
    let onnx = a.output.join(format!("{stem}.ec.onnx"));
    let json = a.output.join(format!("{stem}.ec.json"));
    let r = conv.report(&a.m.name(), &g);
    // The plan first, the model last: the model's presence says both were written (a kill
    // in between leaves a plan without its model, never a model with another run's plan).
    ecc::files::create_dir(&a.output)?;
    let _ = std::fs::remove_file(&onnx);
    ecc::files::write_bytes(&json, serde_json::to_string_pretty(&r)?.as_bytes())?;
    ecc::export::write_file(&conv.canon, &onnx)?;
    match a.emit {
        Emit::Plan => print!("{}", r.summary()),
        Emit::Program => {
            for (i, b) in conv.basis.blocks.iter().enumerate() {
                print!("{}", ecc::ec::program::text(i, b));
            }
            match ecc::ec::balance::Balance::new(&g, &conv.analysis) {
                Ok(plan) => print!("{}", plan.text()),
                Err(e) => println!("program balanced-sgd: not available: {e}"),
            }
        }
    }
    println!("wrote        {} and {}", onnx.display(), json.display());
    Ok(())
}
