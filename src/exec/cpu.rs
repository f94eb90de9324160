//! CPU feature dispatch for ecc's own elementwise loops.

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
