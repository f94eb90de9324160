//! Writing files. Every file ecc writes (models, checkpoints, metrics, EC plans, the results
//! document) goes through [`write_atomic`]: a temporary file beside the target, renamed into
//! place. A failure or a kill therefore leaves the previous file as it was, a failure leaves
//! no temporary file behind, and a target that is not a regular file is refused.

use crate::error::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// The temporary file that [`write_atomic`] writes first: `<name>.tmp` beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// An output path must name a regular file or nothing yet, in a folder that exists. Refused
/// (a usage error naming the path): a missing folder, a folder, and a device, pipe or other
/// special file, which a rename would replace (as root, `-o /dev/sda` would destroy it).
pub fn check_target(path: &Path) -> Result<()> {
    check_path(path, false)
}

/// [`check_target`] for a file that is appended to in place rather than replaced (the
/// metrics): a device or pipe (`/dev/stdout`) is fine there.
pub fn check_append_target(path: &Path) -> Result<()> {
    check_path(path, true)
}

fn check_path(path: &Path, special_ok: bool) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || (special_ok && !m.is_dir()) => Ok(()),
        Ok(m) => Err(Error::usage(format!(
            "{}: is {}, not a regular file",
            path.display(),
            if m.is_dir() {
                "a folder"
            } else {
                "a device or other special file"
            }
        ))),
        Err(_) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                Err(Error::usage(format!(
                    "{}: the folder {} does not exist",
                    path.display(),
                    dir.display()
                )))
            }
        }
    }
}

/// Write `path` through `write`, which fills the temporary file it is given; then rename it
/// into place. Errors name `path` (kind [`ErrorKind::Write`]).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    check_target(path)?;
    let tmp = temp_path(path);
    let fail = |e: String| {
        let _ = std::fs::remove_file(&tmp);
        Error::new(ErrorKind::Write(e)).in_file(path)
    };
    write(&tmp).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
}

/// Create a folder (and its parents) to write into; errors name it (kind
/// [`ErrorKind::Write`]).
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::new(ErrorKind::Write(format!("cannot create the folder: {e}"))).in_file(dir)
    })
}

/// [`write_atomic`] of a byte string.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_atomically_and_leave_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("ecc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.json");
        write_bytes(&f, b"one").unwrap();
        write_bytes(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        // A failing writer leaves the old file and no temporary one.
        let e = write_atomic(&f, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err("disk full".into())
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: cannot write file: disk full", f.display())
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!temp_path(&f).exists());
        // Targets that are not regular files, and missing folders.
        for (p, msg) in [
            (dir.clone(), "is a folder"),
            (PathBuf::from("/dev/null"), "special file"),
            (dir.join("no/such.onnx"), "does not exist"),
        ] {
            let e = write_bytes(&p, b"x").unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
        assert_eq!(temp_path(Path::new("m.onnx")), Path::new("m.onnx.tmp"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
