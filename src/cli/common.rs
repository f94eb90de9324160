//! What several commands share: the model arguments, the checks every command makes before
//! any work (numeric options through [`ecc::train::check_options`], output paths through
//! [`check_output`], [`check_appended`]), and Ctrl-C.

use anyhow::Result;
use ecc::import::{self, ImportOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Concrete dims for an input, as NAME=DxDx... (needed for inputs with symbolic
    /// non-batch dims, e.g. --input-shape input_1=1x12x12x3). Repeatable.
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shapes: Vec<String>,
}

/// Import options from `--input-shape NAME=DxDx...` arguments.
pub fn input_shape_options(args: &[String]) -> Result<ImportOptions> {
    let mut input_shapes = HashMap::new();
    for s in args {
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

impl ModelArgs {
    /// The import options the arguments give.
    pub fn options(&self) -> Result<ImportOptions> {
        input_shape_options(&self.input_shapes)
    }

    /// Import the model.
    pub fn load(&self) -> Result<ecc::ir::Graph> {
        let g = import::load_file(&self.model, &self.options()?)?;
        print_notes(&g, &self.name());
        Ok(g)
    }

    /// The model's name in reports: its path as given.
    pub fn name(&self) -> String {
        self.model.display().to_string()
    }
}

/// What import changed that the user should know (`ModelMeta::notes`), one `note:` line
/// each on stderr (stdout may be JSON).
pub fn print_notes(g: &ecc::ir::Graph, name: &str) {
    for n in &g.meta.notes {
        eprintln!("note: {name}: {n}");
    }
}

/// An output file given by option `flag`, which ecc replaces (write, then rename), must be
/// writable where it is named: its folder exists, it is not a folder or a device. Checked
/// before a long run starts, not after.
pub fn check_output(flag: &str, path: Option<&Path>) -> ecc::Result<()> {
    checked(flag, path, ecc::files::check_target)
}

/// [`check_output`] for a file that ecc appends to in place (`--metrics`): a device or pipe
/// is fine there.
pub fn check_appended(flag: &str, path: Option<&Path>) -> ecc::Result<()> {
    checked(flag, path, ecc::files::check_append_target)
}

fn checked(
    flag: &str,
    path: Option<&Path>,
    check: fn(&Path) -> ecc::Result<()>,
) -> ecc::Result<()> {
    match path {
        Some(p) => check(p).map_err(|e| ecc::Error::usage(format!("{flag} {}", e.kind))),
        None => Ok(()),
    }
}

/// Set by Ctrl-C during training.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// From now on, Ctrl-C sets [`STOP`]: the running step finishes, its checkpoint is written,
/// and the run stops (exit 130); the same command resumes it.
pub fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
}
