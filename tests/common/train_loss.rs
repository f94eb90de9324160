//! A model's training-mode loss in f64 (the executor with BatchNormalization on batch
//! statistics): the sum of squared outputs over a fixed batch of 5 random inputs, with
//! settable weights, its value and its gradients by name.

use candle_core::{DType, Device, Tensor};
use ecc::ec::step::Tensors;
use ecc::exec::Executor;
use ecc::ir::Graph;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Random inputs in [-1, 1) for every graph input, batch 5, fixed seed.
pub fn inputs(g: &Graph, dtype: DType) -> Vec<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    g.inputs
        .iter()
        .map(|i| {
            let dims = g.shapes[&i.name].with_batch(5);
            let n: usize = dims.iter().product();
            let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            Tensor::from_vec(v, dims, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        })
        .collect()
}

/// The model in f64 with settable weights and a training-mode loss (sum of squared
/// outputs over a fixed batch of 5).
pub struct Loss {
    pub ex: Executor,
    pub xs: Vec<Tensor>,
    dims: HashMap<String, Vec<usize>>,
}

impl Loss {
    pub fn new(g: &Graph) -> Self {
        Loss {
            ex: Executor::with_dtype(g, DType::F64).unwrap(),
            xs: inputs(g, DType::F64),
            dims: g
                .params
                .iter()
                .map(|(k, p)| (k.clone(), p.dims.clone()))
                .collect(),
        }
    }
    pub fn set(&self, w: &Tensors) {
        for (k, v) in self.ex.params() {
            let t = Tensor::from_vec(w[k].clone(), self.dims[k].clone(), &Device::Cpu).unwrap();
            v.set(&t).unwrap();
        }
    }
    pub fn tensor(&self) -> Tensor {
        let ys = self.ex.forward_train(&self.xs, 0).unwrap();
        let mut l = ys[0].sqr().unwrap().sum_all().unwrap();
        for y in &ys[1..] {
            l = (l + y.sqr().unwrap().sum_all().unwrap()).unwrap();
        }
        l
    }
    pub fn at(&self, w: &Tensors) -> f64 {
        self.set(w);
        self.tensor().to_scalar::<f64>().unwrap()
    }
    pub fn grads(&self, w: &Tensors) -> Tensors {
        self.set(w);
        let grads = self.tensor().backward().unwrap();
        self.ex
            .params()
            .iter()
            .map(|(k, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
                    .unwrap_or_else(|| vec![0.0; v.elem_count()]);
                (k.clone(), g)
            })
            .collect()
    }
}

/// Spec §9.5 in training mode: the ICR of `basis` at the weights of `g` against central
/// differences of the training-mode loss through (p, V) -> w, in f64: 6 coordinates of each
/// block tensor and the V's `picks(block, n)` chooses. A derivative below 1e-6 of the
/// largest path gradient counts as zero (a unit no sample activates). Returns (worst
/// relative error, number checked).
pub fn icr_check_training(
    name: &str,
    basis: &ecc::ec::Basis,
    g: &Graph,
    picks: impl Fn(usize, usize) -> Vec<usize>,
) -> (f64, usize) {
    let step = ecc::ec::step::EcStep::new(basis);
    let loss = Loss::new(g);
    let w0 = super::mlp64::f64s(g);
    let icr = step.icr(&w0, &loss.grads(&w0));
    let (pc, vc) = step.coordinates(&w0);
    let l_at = |p: &Tensors, v: &[Vec<f64>]| loss.at(&step.weights_from(&w0, p, v));
    let floor = 1e-6
        * icr
            .dp
            .values()
            .flatten()
            .chain(icr.dv.iter().flatten())
            .fold(0f64, |m, x| m.max(x.abs()));
    super::icr_check(name, &icr, &l_at, &pc, &vc, &step.params(), 6, picks, floor)
}
