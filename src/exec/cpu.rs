//! CPU feature dispatch for ecc's own elementwise loops, and the description of the machine
//! that metrics record ([`machine`]).

/// Define `fn name(args) -> R { body }` compiled twice: for AVX2, called when the CPU has it
/// (std caches the check), and for the build's baseline (x86-64 has 4-wide SSE2 only). The
/// body is a plain inlined function, so its loops are vectorized 8 wide in the AVX2 copy.
/// Results are the same either way: Rust never fuses a multiply and an add on its own, so
/// every element sees the same IEEE operations in the same order, only more at a time.
/// Use it for loops that run long enough to pay for one call.
macro_rules! wide_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

/// Run `f` compiled for AVX2 where the CPU has it, as [`wide_fn!`] does for a named function:
/// the closure is inlined into a copy of this function built for AVX2, so its loops are
/// vectorized 8 wide there (same results, as for `wide_fn!`). For loops inside generic
/// kernels, around a body that runs long enough to pay for the check (a plane, a row).
/// LLVM may still leave a closure's body out of line, compiled for the baseline: BN's
/// elementwise passes handed through `norm::planes` ran 4-wide SSE and scalar this way (14%
/// of a narrow PlainNet step); check hot loops in a profile (`perf annotate`: xmm vs ymm).
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// The machine as far as it decides a run's numbers: the CPU model and the matmul kernels
/// the `gemm` crate picks on it at run time (AVX-512 where the CPU has AVX-512F, otherwise
/// FMA/AVX2, otherwise scalar), e.g. `AMD EPYC / avx2`. Different kernels, and different
/// cache sizes (which set the gemm's blocking), round differently, so the same run gives the
/// same bits only on the same kind of machine. Recorded in every metrics line.
pub fn machine() -> String {
    static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| format!("{} / {}", cpu_model(), matmul_kernels()))
        .clone()
}

/// The CPU's model name (Linux: /proc/cpuinfo), or "unknown CPU".
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The matmul kernels the `gemm` crate (built with its `x86-v4` feature) runs here: its own
/// dispatch rule (`gemm-common`'s `init_gemm_fn`).
fn matmul_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "avx2"
        } else {
            "scalar"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable"
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    wide_fn! {
        fn axpby(y: &mut [f32], x: &[f32], a: f32, b: f32) {
            for (y, x) in y.iter_mut().zip(x) {
                *y = a * *y + x * b - *y * *x;
            }
        }
    }

    /// The premise of `wide_fn`: the AVX2 copy gives the same bits as the plain loop.
    #[test]
    fn the_wide_copy_computes_the_same_bits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x: Vec<f32> = (0..1003).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let y0: Vec<f32> = (0..1003).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let (a, b) = (0.9f32, 1.0e-3f32);
        let mut wide = y0.clone();
        axpby(&mut wide, &x, a, b);
        let mut plain = y0.clone();
        for (y, x) in plain.iter_mut().zip(&x) {
            *y = std::hint::black_box(a * *y + x * b - *y * *x);
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide), bits(&plain));
    }
}
