//! `ecc convert`: the EC pass, writing the canonical model and its plan, and with
//! `--ec-graph` the EC graph; `--fold` turns an EC graph back into an ordinary model.

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
    /// Also write the EC graph as DIR/<stem>.ecg.onnx: the canonical model whose trainable
    /// tensors are the path coordinates (ec.p.<weight>, ec.v.<block>) and whose nodes
    /// compute every weight from them. Autodiff through it is EC-SGD's inverse chain rule;
    /// SGD with momentum on it (no weight decay on ec.v.*) is EC-SGD's step
    /// (docs/ec-graph.md). Needs opset 11 or newer.
    #[arg(long, conflicts_with = "fold")]
    ec_graph: bool,
    /// MODEL is an EC graph (trained or not): compute its weights from the coordinates and
    /// write the ordinary model as DIR/<stem>.folded.onnx (stem without .ecg). Nothing else
    /// runs.
    #[arg(long)]
    fold: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Emit {
    Plan,
    Program,
}

pub fn run(a: Args) -> Result<()> {
    let g = a.m.load()?;
    let stem =
        a.m.model
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
    if a.fold {
        let stem = stem.strip_suffix(".ecg").unwrap_or(&stem);
        let out = a.output.join(format!("{stem}.folded.onnx"));
        let folded = ecc::ec::graph::fold(&g)?;
        ecc::files::create_dir(&a.output)?;
        ecc::export::write_file(&folded, &out)?;
        println!(
            "folded       {} parameter computations into {} parameters",
            g.nodes.len() - folded.nodes.len(),
            folded.params.len()
        );
        println!("wrote        {}", out.display());
        return Ok(());
    }
    let conv = ecc::ec::convert(&g);
    let onnx = a.output.join(format!("{stem}.ec.onnx"));
    let json = a.output.join(format!("{stem}.ec.json"));
    let ecg = a.output.join(format!("{stem}.ecg.onnx"));
    let ec_graph = if a.ec_graph {
        Some(ecc::ec::graph::build(&conv.canon, &conv.basis)?)
    } else {
        None
    };
    let r = conv.report(&a.m.name(), &g);
    // The plan first, the model last: the model's presence says both were written (a kill
    // in between leaves a plan without its model, never a model with another run's plan).
    ecc::files::create_dir(&a.output)?;
    let _ = std::fs::remove_file(&onnx);
    ecc::files::write_bytes(&json, serde_json::to_string_pretty(&r)?.as_bytes())?;
    if let Some(e) = &ec_graph {
        ecc::export::write_file(e, &ecg)?;
    }
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
    if ec_graph.is_some() {
        println!("wrote        {} (the EC graph)", ecg.display());
    }
    Ok(())
}
