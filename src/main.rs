//! The `ecc` binary: process setup, then the command line of [`cli`] (one module per
//! command; the error and exit-code policy is in `cli/mod.rs`).

mod cli;

fn main() {
    // Exit quietly when the reader of stdout goes away (`ecc analyze m.onnx | head`), as
    // command-line tools do, instead of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Training allocates the same large buffers every step. glibc serves blocks above its
    // mmap threshold with fresh mappings, so each step would page-fault its buffers in again
    // (measured: a CNN step twice as slow in a fresh process); keep them on the heap instead.
    // SAFETY: mallopt only tunes the allocator; called before any allocation-heavy work.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    ecc::exec::join_thread_pool();
    std::process::exit(cli::main());
}
