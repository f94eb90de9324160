//! `ecc run`: one forward pass on random or saved inputs, with output statistics.

use super::common::ModelArgs;
use anyhow::Result;
use candle_core::Tensor;
use ecc::exec::{constant_tensor, tensor_constant, Executor};
use ecc::import::tensor;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: ModelArgs,
    /// Batch size for random inputs.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seed of the random inputs (standard normal).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Read inputs from DIR/input_K.pb (ONNX TensorProto files) instead.
    #[arg(long, value_name = "DIR")]
    inputs: Option<PathBuf>,
    /// Write the inputs and outputs as DIR/input_K.pb and DIR/output_K.pb.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 {
        return Err(ecc::Error::usage("--batch 0: the batch size must be at least 1").into());
    }
    let g = a.m.load()?;
    // Outputs the model computes in nodes ecc keeps without running: saving the others in
    // the test-case layout would misnumber them.
    if let (Some(dir), Some(t)) = (&a.save, &g.meta.tail) {
        if t.outputs
            .iter()
            .any(|o| matches!(o, ecc::ir::TailOutput::Kept(_)))
        {
            return Err(ecc::Error::unsupported(format!(
                "--save {}: some of the model's outputs come from nodes after the outputs that ecc keeps but does not run",
                dir.display()
            ))
            .into());
        }
    }
    let ex = Executor::new(&g)?;
    let xs = inputs(&ex, &a)?;
    let ys = ex.forward(&xs)?;
    if let Some(dir) = &a.save {
        save(dir, &ex, &xs, &ys)?;
    }
    for (t, name) in ys.iter().zip(ex.output_names()) {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        println!("output {name:<24} {:?} {}", t.dims(), stats(&v));
    }
    Ok(())
}

/// One tensor per model input: read from `--inputs`, or standard normal from `--seed`.
fn inputs(ex: &Executor, a: &Args) -> Result<Vec<Tensor>> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut xs = vec![];
    for (k, name) in ex.input_names().iter().enumerate() {
        let t = match &a.inputs {
            Some(dir) => constant_tensor(
                &tensor::read_pb_float(&dir.join(format!("input_{k}.pb")))?,
                ex.device(),
            )?,
            None => {
                let dims = ex.input_shape(k).with_batch(a.batch);
                ecc::ir::Shape::fixed(dims.clone())
                    .check(&format!("input '{name}' with --batch {}", a.batch))?;
                let n: usize = dims.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|_| rand_distr::StandardNormal.sample(&mut rng))
                    .collect();
                Tensor::from_vec(v, dims, ex.device())?
            }
        };
        println!("input  {name:<24} {:?}", t.dims());
        xs.push(t);
    }
    Ok(xs)
}

/// Write inputs and outputs as TensorProto files (the ONNX test-case layout).
fn save(dir: &Path, ex: &Executor, xs: &[Tensor], ys: &[Tensor]) -> Result<()> {
    ecc::files::create_dir(dir)?;
    let sides = [
        ("input", xs, ex.input_names()),
        ("output", ys, ex.output_names()),
    ];
    for (side, ts, names) in sides {
        for (k, (t, name)) in ts.iter().zip(names).enumerate() {
            let path = dir.join(format!("{side}_{k}.pb"));
            tensor::write_pb(&path, name, &tensor_constant(t)?)?;
        }
    }
    Ok(())
}

fn stats(v: &[f32]) -> String {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let min = v.iter().copied().fold(f32::INFINITY, f32::min);
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    format!("min {min:.6} max {max:.6} mean {mean:.6}")
}
