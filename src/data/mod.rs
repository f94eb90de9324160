//! Data sets: the embedded 8x8 digits, and MNIST-format IDX files (raw or gzipped) for MNIST
//! and Fashion-MNIST. Images become f32 in [0, 1], one sample per row; labels are class
//! indices.

use crate::error::{Error, ErrorKind, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Samples of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Per-sample dims (C, H, W).
    pub dims: Vec<usize>,
    /// n x prod(dims) pixels in [0, 1].
    pub x: Vec<f32>,
    pub y: Vec<u32>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    pub fn features(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A named train/test pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub name: String,
    pub classes: usize,
    pub train: Dataset,
    pub test: Dataset,
}

const DIGITS: &[u8] = include_bytes!("../../data/digits.csv.gz");

fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut out = vec![];
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid(format!("{what}: cannot decompress: {e}")))?;
    Ok(out)
}

/// The embedded digits, split with a fixed seed: 1437 train, 360 test.
pub fn digits() -> Result<Split> {
    let text = String::from_utf8(gunzip(DIGITS, "embedded digits")?)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let mut rows: Vec<(Vec<f32>, u32)> = vec![];
    for (i, line) in text.lines().enumerate() {
        let v: Vec<u32> = line
            .split(',')
            .map(|t| t.trim().parse::<u32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::invalid(format!("embedded digits line {}: {e}", i + 1)))?;
        if v.len() != 65 || v[64] > 9 {
            return Err(Error::invalid(format!(
                "embedded digits line {}: expected 64 pixels and a label",
                i + 1
            )));
        }
        rows.push((v[..64].iter().map(|&p| p as f32 / 16.0).collect(), v[64]));
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let n_test = rows.len() / 5;
    let make = |idx: &[usize]| Dataset {
        dims: vec![1, 8, 8],
        x: idx
            .iter()
            .flat_map(|&i| rows[i].0.iter().copied())
            .collect(),
        y: idx.iter().map(|&i| rows[i].1).collect(),
    };
    Ok(Split {
        name: "digits".into(),
        classes: 10,
        test: make(&order[..n_test]),
        train: make(&order[n_test..]),
    })
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io(e.to_string())).in_file(path)
}

/// Parse IDX bytes (gzipped or raw): dims and u8 data.
pub fn parse_idx(bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw;
    let b = if bytes.starts_with(&[0x1f, 0x8b]) {
        raw = gunzip(bytes, "IDX file")?;
        &raw[..]
    } else {
        bytes
    };
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(Error::invalid("not an IDX file: wrong magic number"));
    }
    if b[2] != 0x08 {
        return Err(Error::unsupported(format!(
            "IDX element type 0x{:02x} (ecc reads unsigned bytes, 0x08)",
            b[2]
        )));
    }
    let nd = b[3] as usize;
    if nd == 0 || nd > 4 || b.len() < 4 + 4 * nd {
        return Err(Error::invalid(format!(
            "IDX header with {nd} dimensions is truncated or invalid"
        )));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::invalid("IDX dims overflow"))?;
    let data = &b[4 + 4 * nd..];
    if data.len() != n {
        return Err(Error::invalid(format!(
            "IDX data has {} bytes, dims {dims:?} need {n} (truncated?)",
            data.len()
        )));
    }
    Ok((dims, data.to_vec()))
}

/// Images and labels from a pair of IDX files.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| io_err(p, e));
    let (di, xi) = parse_idx(&read(images)?).map_err(|e| e.in_file(images))?;
    let (dl, yl) = parse_idx(&read(labels)?).map_err(|e| e.in_file(labels))?;
    if di.len() != 3 || dl.len() != 1 {
        return Err(Error::invalid(format!(
            "expected images N x H x W and labels N, got {di:?} and {dl:?}"
        ))
        .in_file(images));
    }
    if di[0] != dl[0] {
        return Err(Error::invalid(format!(
            "{} images but {} labels in {}",
            di[0],
            dl[0],
            labels.display()
        ))
        .in_file(images));
    }
    Ok(Dataset {
        dims: vec![1, di[1], di[2]],
        x: xi.iter().map(|&p| p as f32 / 255.0).collect(),
        y: yl.iter().map(|&l| l as u32).collect(),
    })
}

/// The MNIST file names in `dir`, raw or gzipped.
fn idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::new(ErrorKind::Io(format!(
        "no {stem} or {stem}.gz (run scripts/fetch-data.sh)"
    )))
    .in_file(dir))
}

/// MNIST-format data in a folder: train-images-idx3-ubyte, train-labels-idx1-ubyte,
/// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each raw or .gz).
pub fn mnist_format(name: &str, dir: &Path) -> Result<Split> {
    let pair = |split: &str| -> Result<Dataset> {
        load_idx(
            &idx_file(dir, &format!("{split}-images-idx3-ubyte"))?,
            &idx_file(dir, &format!("{split}-labels-idx1-ubyte"))?,
        )
    };
    Ok(Split {
        name: name.into(),
        classes: 10,
        train: pair("train")?,
        test: pair("t10k")?,
    })
}

/// `digits`, `mnist:DIR` or `fashion-mnist:DIR`.
pub fn load(spec: &str) -> Result<Split> {
    match spec.split_once(':') {
        None if spec == "digits" => digits(),
        Some(("mnist", dir)) => mnist_format("mnist", Path::new(dir)),
        Some(("fashion-mnist", dir)) => mnist_format("fashion-mnist", Path::new(dir)),
        _ => Err(Error::usage(format!(
            "--data '{spec}': expected digits, mnist:DIR or fashion-mnist:DIR"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(data);
        b
    }

    #[test]
    fn digits_are_embedded_and_split_the_same_way_every_time() {
        let d = digits().unwrap();
        assert_eq!((d.train.len(), d.test.len()), (1438, 359));
        assert_eq!(d.train.features(), 64);
        assert!(d.train.x.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let again = digits().unwrap();
        assert_eq!((d.train.clone(), d.test.clone()), (again.train, again.test));
        for c in 0..10 {
            assert!(
                d.test.y.iter().filter(|&&y| y == c).count() > 20,
                "class {c} is rare in the test split"
            );
        }
    }

    #[test]
    fn idx_raw_and_gzipped() {
        let b = idx(&[2, 2, 3], &[0, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let (dims, data) = parse_idx(&b).unwrap();
        assert_eq!((dims, data.len()), (vec![2, 2, 3], 12));
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b).unwrap();
        assert_eq!(parse_idx(&gz.finish().unwrap()).unwrap().1[1], 255);
    }

    #[test]
    fn bad_idx_files_fail_clearly() {
        let e = |b: &[u8]| parse_idx(b).unwrap_err().to_string();
        assert!(e(b"hello world").contains("wrong magic"));
        assert!(e(&idx(&[2, 2], &[1, 2, 3])).contains("truncated"));
        assert!(e(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0]).contains("element type"));
        assert!(e(&[0, 0, 8, 3, 0]).contains("header"));
        let dir = std::env::temp_dir().join(format!("ecc-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("i"), idx(&[3, 2, 2], &[0; 12])).unwrap();
        std::fs::write(dir.join("l"), idx(&[2], &[1, 2])).unwrap();
        let msg = load_idx(&dir.join("i"), &dir.join("l"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("3 images but 2 labels"), "{msg}");
        assert!(load("cifar:/x")
            .unwrap_err()
            .to_string()
            .contains("expected digits"));
        assert!(load(&format!("mnist:{}", dir.display()))
            .unwrap_err()
            .to_string()
            .contains("fetch-data.sh"));
    }
}
