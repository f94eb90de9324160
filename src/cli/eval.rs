//! `ecc eval`: loss and accuracy on a data set's test split.

use super::common::ModelArgs;
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: ModelArgs,
    /// The data set, as for `ecc train --data`.
    #[arg(long, default_value = "digits")]
    data: String,
}

pub fn run(a: Args) -> Result<()> {
    let g = ecc::train::logits_graph(&a.m.load()?);
    let split = ecc::data::load(&a.data)?;
    let ex = ecc::exec::Executor::new(&g)?;
    let (loss, acc) = ecc::train::evaluate(&ex, &g, &split.test, 512)?;
    println!(
        "{}: {} test samples, loss {loss:.4}, accuracy {acc:.4}",
        split.name,
        split.test.len()
    );
    Ok(())
}
