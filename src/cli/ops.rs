//! `ecc ops`: the importer's op table.

use anyhow::Result;

pub fn run() -> Result<()> {
    for op in ecc::import::op_names() {
        println!("{op}");
    }
    Ok(())
}
