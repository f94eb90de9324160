//! Sets `ECC_BUILD`, the build's source revision, recorded in every metrics line beside the
//! machine (different builds can round differently): the git commit (12 hex digits), with
//! `+changes` when the tracked files that make the binary (src, rules, models, Cargo.toml,
//! Cargo.lock, build.rs) differ from it, or `unknown` outside a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("git").args(args).output().ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn main() {
    let files = [
        "src",
        "rules",
        "models",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let build = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some((true, rev)) if !rev.is_empty() => {
            // The revision changes with a commit, which moves HEAD's ref (or HEAD itself).
            // (Only paths that exist: a missing one would rerun this script every build.)
            if let Some((true, dir)) = git(&["rev-parse", "--git-dir"]) {
                let mut watch = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
                if let Some((true, r)) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(format!("{dir}/{r}"));
                }
                for w in watch.iter().filter(|w| std::path::Path::new(w).exists()) {
                    println!("cargo:rerun-if-changed={w}");
                }
            }
            let mut args = vec!["diff", "--quiet", "HEAD", "--"];
            args.extend(files);
            match git(&args) {
                Some((true, _)) => rev,
                _ => format!("{rev}+changes"),
            }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=ECC_BUILD={build}");
}
