//! `ecc export`: a round trip through ecc's IR.

use super::common::{check_output, ModelArgs};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: ModelArgs,
    /// Where to write the model.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    check_output("-o", Some(&a.output))?;
    let g = a.m.load()?;
    ecc::export::write_file(&g, &a.output)?;
    println!(
        "wrote {} ({} nodes, {} parameters)",
        a.output.display(),
        g.nodes.len(),
        g.param_count()
    );
    Ok(())
}
