//! `ecc experiment`: run, summarize or plot an experiment description; regenerate a
//! results document.

use super::common::{stop_on_ctrl_c, STOP};
use anyhow::Result;
use ecc::experiment::{self, Experiment};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, value_name = "DOC", conflicts_with_all = ["file", "summary", "plots", "data"])]
    doc: Option<PathBuf>,
    /// Train only the runs of these optimizers of the description (comma-separated, e.g.
    /// ec-sgd,sgd-ec-init), leaving the others for a later call: to finish the comparison
    /// that matters first when the whole grid does not fit in the time there is. Tables and
    /// plots still cover the whole description.
    #[arg(long, value_name = "OPTIMIZERS", value_delimiter = ',', conflicts_with_all = ["summary", "plots"])]
    only: Vec<String>,
    /// Run the description on another data set without editing it: digits, mnist,
    /// fashion-mnist, mnist:DIR, fashion-mnist:DIR or cifar10:DIR (the binary batches). The
    /// models of `ecc new` in it take that data's input shape (plain:1x28x28-n3 becomes
    /// plain:3x32x32-n3 on CIFAR-10, an MLP's input size the pixel count) and, when the kind
    /// of data changes, the runs go to OUT/<name>-<kind>/ (e.g. results/bn-compare-cifar10/),
    /// apart from the description's own. Give it to --summary and --plots as well to read
    /// those runs.
    #[arg(long, value_name = "SPEC")]
    data: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(doc) = &a.doc {
        for f in experiment::update_doc(doc, &a.out)? {
            println!("{}: regenerated the block of {f}", doc.display());
        }
        return Ok(());
    }
    let file = a.file.as_ref().expect("clap requires FILE without --doc");
    let mut exp = Experiment::load(file)?;
    if let Some(spec) = &a.data {
        exp = exp.on_data(spec)?;
    }
    if a.summary {
        print!("{}", experiment::summary(&exp, &a.out)?);
    }
    if let Some(dir) = &a.plots {
        for name in experiment::write_plots(&exp, &a.out, dir)? {
            println!("wrote {}", dir.join(name).display());
        }
    }
    if a.summary || a.plots.is_some() {
        return Ok(());
    }
    let exp = only(exp, &a.only)?;
    train(&exp, &a)
}

/// The description with only the optimizers `names` (all when empty), in its own order;
/// a name it does not have is a usage error.
fn only(mut exp: Experiment, names: &[String]) -> Result<Experiment> {
    if names.is_empty() {
        return Ok(exp);
    }
    let listed: Vec<&str> = exp.optimizers.iter().map(|o| o.name()).collect();
    for n in names {
        if !listed.contains(&n.as_str()) {
            return Err(ecc::Error::usage(format!(
                "--only {n}: experiment {} has no such optimizer (it has {})",
                exp.name,
                listed.join(", ")
            ))
            .into());
        }
    }
    exp.optimizers
        .retain(|o| names.iter().any(|n| n == o.name()));
    Ok(exp)
}

/// Run every (optimizer, seed) of the experiment, skipping finished runs and runs another
/// process is training, resuming the rest.
fn train(exp: &Experiment, a: &Args) -> Result<()> {
    println!(
        "experiment {}: {} optimizers x {} seeds x {} epochs",
        exp.name,
        exp.optimizers.len(),
        exp.seeds.len(),
        exp.epochs
    );
    if a.data.is_some() {
        println!("  on {}: {}", exp.data, exp.model.list().join(", "));
    }
    stop_on_ctrl_c();
    let runs = experiment::run(exp, &a.out, Some(&STOP), |run, m| {
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
    for r in runs.iter().filter(|r| r.busy) {
        println!(
            "  {} {} seed {}: skipped, another process is training it",
            r.model,
            r.optimizer.name(),
            r.seed
        );
    }
    let fresh = runs.iter().filter(|r| r.trained > 0).count();
    let busy = runs.iter().filter(|r| r.busy).count();
    let others = match busy {
        0 => String::new(),
        n => format!("; {n} left to other processes"),
    };
    println!(
        "{} runs complete ({fresh} trained now{others}) in {}",
        runs.len() - busy,
        a.out.join(&exp.name).display()
    );
    Ok(())
}
