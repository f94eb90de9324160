//! Shared test helpers: where the fetched fixtures are, and output comparison.
#![allow(dead_code)]

pub mod mlp64;
pub mod onnx;
pub mod torch_ec;
pub mod train_loss;

use candle_core::Tensor;
use std::path::PathBuf;

/// True under CI: `CI` set to anything but "", "0" or "false" (`.ci/run` sets it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The one skip guard of every test that needs something fetched: `Some(path)` when `ready`
/// says it is there; otherwise under CI the test fails, and elsewhere it prints a SKIPPED
/// line naming `what` (and the script that fetches it) and gets `None`.
pub fn require(path: PathBuf, ready: bool, what: &str) -> Option<PathBuf> {
    if ready {
        return Some(path);
    }
    if under_ci() {
        panic!("{what} missing in {} under CI", path.display());
    }
    eprintln!("SKIPPED: {what} missing; looked in {}", path.display());
    None
}

/// The fixture cache written by `scripts/fetch-fixtures.sh` (see [`require`]).
pub fn fixtures() -> Option<PathBuf> {
    let dir = ecc::fixture_dir();
    let ready = dir.join(".complete").is_file();
    require(dir, ready, "fixtures (scripts/fetch-fixtures.sh)")
}

/// One CIFAR-10 binary record: `label`, then 3 x 32 x 32 pixels of value 100.
pub fn cifar_record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(100u8, 3072));
    r
}

/// A small CIFAR-10 folder in the real files' format: `data_batch_1.bin` to `_5.bin` with
/// two records each (labels 1 and 2), `test_batch.bin` with one (label 3).
pub fn write_cifar(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 1..=5 {
        std::fs::write(
            dir.join(format!("data_batch_{k}.bin")),
            [cifar_record(1), cifar_record(2)].concat(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_record(3)).unwrap();
}

/// The data cache written by `scripts/fetch-data.sh` (see [`require`]).
pub fn data() -> Option<PathBuf> {
    let d = ecc::data_dir();
    let ready = d.join("mnist").is_dir() && d.join("fashion-mnist").is_dir();
    require(d, ready, "data sets (scripts/fetch-data.sh)")
}

/// A fresh scratch folder `<tmp>/ecc-<tag>-<pid>`, removed when the guard is dropped (also
/// when the test fails), so test runs leave nothing behind.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ecc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `epoch` of every line of a metrics file (JSON lines).
pub fn metric_epochs(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The repository's committed models.
pub fn committed_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    v
}

/// Norm-wise relative error max|a - b| / max(max|b|, 1e-6).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-6);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    if a.iter().chain(b).any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    diff / scale
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every output of `g` (eval mode) on `xs`, flattened.
pub fn outputs(g: &ecc::ir::Graph, xs: &[Tensor]) -> Vec<Vec<f32>> {
    ecc::exec::Executor::new(g)
        .unwrap()
        .forward(xs)
        .unwrap()
        .iter()
        .map(values)
        .collect()
}

/// The largest [`rel_err`] over corresponding outputs.
pub fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| rel_err(x, y))
        .fold(0.0, f64::max)
}

/// The gradients (as f64, by parameter name) of the mean cross-entropy of `ex`'s logits on
/// `x` (training mode) against labels `y`.
pub fn ce_grads(ex: &ecc::exec::Executor, x: &Tensor, y: &Tensor) -> Tensors {
    let logits = ex.forward_train(std::slice::from_ref(x), 0).unwrap()[0]
        .flatten_from(1)
        .unwrap();
    let store = ecc::train::cross_entropy(&logits, y)
        .unwrap()
        .backward()
        .unwrap();
    ex.grads_by_name(&store)
        .into_iter()
        .map(|(k, t)| {
            let v = t
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            (k, v)
        })
        .collect()
}

/// Runs the `ecc` binary: (exit code, stdout, stderr).
pub fn ecc(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The 9 light model-zoo architectures of the onnx wheel.
pub const ZOO: [&str; 9] = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
];

/// Seeded standard-normal inputs for every graph input, at the given batch size.
pub fn random_inputs(g: &ecc::ir::Graph, batch: usize, seed: u64) -> Vec<Tensor> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    g.inputs
        .iter()
        .map(|i| {
            let dims = g.shapes[&i.name].with_batch(batch);
            let n = dims.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| rand_distr::StandardNormal.sample(&mut rng))
                .collect();
            Tensor::from_vec(v, dims, &candle_core::Device::Cpu).unwrap()
        })
        .collect()
}

/// Exact rank of an integer matrix: fraction-free elimination, rows reduced by their gcd.
pub fn rank(mut rows: Vec<Vec<i128>>) -> usize {
    fn gcd(a: i128, b: i128) -> i128 {
        if b == 0 {
            a.abs()
        } else {
            gcd(b, a % b)
        }
    }
    let cols = rows.first().map_or(0, Vec::len);
    let mut r = 0;
    for c in 0..cols {
        let Some(p) = (r..rows.len()).find(|&i| rows[i][c] != 0) else {
            continue;
        };
        rows.swap(r, p);
        for i in 0..rows.len() {
            if i == r || rows[i][c] == 0 {
                continue;
            }
            let (a, b) = (rows[r][c], rows[i][c]);
            let pivot = rows[r].clone();
            let row = &mut rows[i];
            for (x, y) in row.iter_mut().zip(&pivot) {
                *x = *x * a - *y * b;
            }
            let g = row.iter().fold(0, |g, &x| gcd(g, x));
            if g > 1 {
                row.iter_mut().for_each(|x| *x /= g);
            }
        }
        r += 1;
    }
    r
}

use ecc::ec::step::{EcState, EcStep, StepConfig, Tensors};

/// A learning rate at which the first step moves every V coordinate by at most `frac`
/// relative (far from the guard) for gradients `g`.
pub fn calm_lr(step: &EcStep, w: &Tensors, g: &Tensors, frac: f64) -> f64 {
    let (_, q) = step.coordinates(w);
    let fastest = step
        .icr(w, g)
        .dv
        .iter()
        .flatten()
        .zip(q.iter().flatten())
        .fold(0f64, |m, (d, v)| m.max((d / v).abs()));
    frac / fastest.max(1e-300)
}

/// Spec §9.6: take one step of `step` on `w` from zero momentum and compare the recomputed
/// coordinates with what spec §5 says they must be, computed here and not read from the
/// optimizer: p − lr·(∂L/∂p + λ·p) and V − lr·∂L/∂V (path-space momentum starts at the
/// first gradient; decay on p only), the gradients by the ICR (itself checked against
/// finite differences). Returns (worst relative error, largest relative move, number of
/// V's the guard replaced).
pub fn weight_allocation_errors(
    step: &EcStep,
    w: &mut Tensors,
    g: &Tensors,
    cfg: &StepConfig,
) -> (f64, f64, usize) {
    let mut state = EcState::default();
    let (p0, q0) = step.coordinates(w);
    let icr = step.icr(w, g);
    let guarded = step.step(w, g, &mut state, cfg);
    let (p1, q1) = step.coordinates(w);
    let (mut worst, mut moved) = (0f64, 0f64);
    for (k, ps) in &p1 {
        for i in 0..ps.len() {
            if p0[k][i] == 0.0 {
                continue;
            }
            let want = p0[k][i] - cfg.lr * (icr.dp[k][i] + cfg.weight_decay * p0[k][i]);
            worst = worst.max((ps[i] - want).abs() / want.abs().max(1e-300));
            moved = moved.max((want - p0[k][i]).abs() / p0[k][i].abs());
        }
    }
    for (qs, (q0s, ds)) in q1.iter().zip(q0.iter().zip(&icr.dv)) {
        for c in 0..qs.len() {
            let want = q0s[c] - cfg.lr * ds[c];
            worst = worst.max((qs[c] - want).abs() / want.abs());
            moved = moved.max((want - q0s[c]).abs() / q0s[c].abs());
        }
    }
    (worst, moved, guarded)
}

/// A loss written as a function of the path coordinates (p, q).
pub type CoordLoss<'a> = dyn Fn(&Tensors, &[Vec<f64>]) -> f64 + 'a;

/// Spec §9.5: the central difference of `f` along p[k][i], step `rel` times its size.
pub fn fd_p(f: &CoordLoss, p: &Tensors, q: &[Vec<f64>], k: &str, i: usize, rel: f64) -> f64 {
    let h = rel * p[k][i].abs();
    let (mut up, mut dn) = (p.clone(), p.clone());
    up.get_mut(k).unwrap()[i] += h;
    dn.get_mut(k).unwrap()[i] -= h;
    (f(&up, q) - f(&dn, q)) / (2.0 * h)
}

/// Spec §9.5: the central difference of `f` along the coordinate of V `c` of block `b`.
pub fn fd_q(f: &CoordLoss, p: &Tensors, q: &[Vec<f64>], b: usize, c: usize, rel: f64) -> f64 {
    let h = rel * q[b][c].abs();
    let (mut up, mut dn) = (q.to_vec(), q.to_vec());
    up[b][c] += h;
    dn[b][c] -= h;
    (f(p, &up) - f(p, &dn)) / (2.0 * h)
}

/// |a − b| relative to the larger of the two, or to `floor` when both are smaller.
pub fn rel_diff(a: f64, b: f64, floor: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(floor)
}

/// Spec §9.5: the ICR `icr` against central differences of `f` at (p, q): `per_param`
/// random nonzero coordinates of each tensor in `params`, and the V's `v_picks(block, n)`
/// chooses, each to 1e-3 relative (`floor`: the size below which a derivative counts as
/// zero). A coordinate whose step would change the loss by less than 1e-12 of it (a weight
/// of 1e-24 in a deep canonical form) cannot be resolved in f64 and is not counted.
/// Returns (worst relative error, number checked).
#[allow(clippy::too_many_arguments)]
pub fn icr_check(
    name: &str,
    icr: &ecc::ec::step::Icr,
    f: &CoordLoss,
    p: &Tensors,
    q: &[Vec<f64>],
    params: &[String],
    per_param: usize,
    v_picks: impl Fn(usize, usize) -> Vec<usize>,
    floor: f64,
) -> (f64, usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let (mut worst, mut checked) = (0f64, 0);
    let l0 = f(p, q).abs();
    // The step changes the loss by about |dL/dx · x| · 1e-5; f64 resolves that to 1e-4 when
    // it is at least 1e-12 of the loss.
    let resolvable = |an: f64, x: f64| an.abs().max(floor) * 1e-5 * x.abs() >= 1e-12 * l0;
    let mut check = |fd: f64, an: f64, what: &str| {
        let err = rel_diff(fd, an, floor);
        assert!(
            err <= 1e-3,
            "{name}: {what}: ICR {an} vs finite difference {fd}"
        );
        worst = worst.max(err);
        checked += 1;
    };
    for k in params {
        for _ in 0..per_param {
            // Of 20 random scalars, the one that moves the loss most (so that it resolves).
            let i = (0..20)
                .map(|_| rng.gen_range(0..p[k].len()))
                .max_by(|&a, &b| {
                    let m = |j: usize| (icr.dp[k][j] * p[k][j]).abs();
                    m(a).total_cmp(&m(b))
                })
                .expect("candidates");
            if p[k][i] != 0.0 && resolvable(icr.dp[k][i], p[k][i]) {
                let fd = fd_p(f, p, q, k, i, 1e-5);
                check(fd, icr.dp[k][i], &format!("dL/dp of {k}[{i}]"));
            }
        }
    }
    for (b, qs) in q.iter().enumerate() {
        for c in v_picks(b, qs.len()) {
            if !resolvable(icr.dv[b][c], qs[c]) {
                continue;
            }
            let fd = fd_q(f, p, q, b, c, 1e-5);
            check(fd, icr.dv[b][c], &format!("dL/dq[{b}][{c}]"));
        }
    }
    (worst, checked)
}

/// A zoo model of the fixture cache at input `shape`, with random weights (the files carry
/// none): scales 1/sqrt(size) (at least 0.05), BN variances in [0.5, 1.5].
pub fn zoo_model(fx: &std::path::Path, name: &str, shape: Vec<usize>) -> ecc::ir::Graph {
    use rand::{Rng, SeedableRng};
    let path = fx.join(format!("onnx/light/light_{name}.onnx"));
    let input = ecc::import::load_file(&path, &Default::default())
        .unwrap()
        .inputs[0]
        .name
        .clone();
    let mut o = ecc::import::ImportOptions::default();
    o.input_shapes.insert(input, shape);
    let mut g = ecc::import::load_file(&path, &o).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // The running variances: input 4 of every BatchNormalization (names vary by model).
    let vars: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, ecc::ir::Op::BatchNorm { .. }))
        .filter_map(|n| n.inputs.get(4).cloned())
        .collect();
    for (k, p) in g.params.iter_mut() {
        let var = vars.contains(k);
        if let ecc::ir::TensorData::F32(v) = &mut p.data {
            let b = (1.0 / (v.len() as f32).sqrt()).max(0.05);
            for x in v.iter_mut() {
                *x = if var {
                    rng.gen_range(0.5..1.5)
                } else {
                    rng.gen_range(-1.0..1.0) * b
                };
            }
        }
    }
    g
}
