//! `ecc new`: a freshly initialized model from a spec (the grammar is in `ecc new --help`).

use super::common::check_output;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(a: Args) -> Result<()> {
    check_output("-o", Some(&a.output))?;
    let s = ecc::zoo::Spec::parse(&a.spec)?;
    let g = ecc::zoo::build(&s, a.seed, !a.no_bias)?;
    ecc::export::write_file(&g, &a.output)?;
    println!(
        "wrote {} ({}, {} parameters)",
        a.output.display(),
        a.spec,
        g.param_count()
    );
    Ok(())
}
