//! Test helpers shared by the kernel tests: finite-difference and fused-vs-plain gradient
//! checks.

use candle_core::{Device, Tensor, Var};

/// d/dx of sum(f(x) * r) by autograd against central differences.
pub(super) fn grad_check(f: impl Fn(&Tensor) -> Tensor, dims: &[usize]) {
    let dev = Device::Cpu;
    // Distinct values 0.05 apart, shuffled with a fixed seed: no max-pool tie is within
    // reach of the finite-difference step, and the test is deterministic.
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    v.shuffle(&mut rng);
    let x = Var::from_tensor(&Tensor::from_vec(v, dims, &dev).unwrap()).unwrap();
    let y = f(x.as_tensor());
    let r = Tensor::from_vec(
        (0..y.elem_count())
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
            .collect::<Vec<_>>(),
        y.dims(),
        &dev,
    )
    .unwrap();
    let loss = (y * &r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let g = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let x0 = x
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let eps = 1e-2f32;
    for i in (0..x0.len()).step_by(7) {
        let at = |d: f32| {
            let mut v = x0.clone();
            v[i] += d;
            let t = Tensor::from_vec(v, dims, &dev).unwrap();
            (f(&t) * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() <= 2e-2 * (1.0 + fd.abs()),
            "at {i}: autograd {} vs finite difference {fd}",
            g[i]
        );
    }
}

/// The gradients of `sum(f(v) * r)` with respect to every input agree between a fused
/// kernel and its unfused reference (exactly where ReLU's kink is involved, up to
/// rounding elsewhere).
pub(super) fn same_grads(
    fused: impl Fn(&[Tensor]) -> Tensor,
    plain: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[&Tensor],
) {
    let grads = |f: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let r = Tensor::from_vec(
            (0..y.elem_count())
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
                .collect::<Vec<_>>(),
            y.dims(),
            &Device::Cpu,
        )
        .unwrap();
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        ts.iter()
            .map(|t| {
                g.get(t)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (grads(&fused), grads(&plain));
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "input {i}: {x} vs {y}"
            );
        }
    }
}

/// `f` run in a pool of `threads` threads (results that must not depend on the threads).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}
