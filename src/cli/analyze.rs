//! `ecc analyze`: the symmetry analysis as a table, JSON, or one unit's explanation.

use super::common::ModelArgs;
use anyhow::Result;
use ecc::analysis::{self, BnMode, RuleSet};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(a: Args) -> Result<()> {
    let g = a.m.load()?;
    let mut set = RuleSet::default_rules();
    if let Some(dir) = &a.rules {
        set.load_dir(dir)?;
    }
    let mode = if a.training {
        BnMode::Training
    } else {
        BnMode::Inference
    };
    let an = analysis::analyze_in(&g, &set, mode);
    if let Some(spec) = &a.explain {
        print!("{}", analysis::report::explain(&g, &an, spec)?);
        return Ok(());
    }
    let r = analysis::report::Report::new(&a.m.name(), &g, &an);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.to_text(if a.all { 0 } else { 30 }));
    }
    Ok(())
}
