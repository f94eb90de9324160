//! Data sets: the embedded 8x8 digits, MNIST-format IDX files (raw or gzipped) for MNIST
//! and Fashion-MNIST, and the CIFAR-10 binary batches. Images become f32, one sample per
//! row: in [0, 1], except CIFAR-10, normalized per channel; labels are class indices.
//! [`augment`] is the standard CIFAR augmentation (random crop with 4 pixels of black
//! padding, horizontal flip), for any image data set.

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
    /// n x prod(dims) pixels: in [0, 1], or normalized per channel (CIFAR-10).
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    /// The value of a black pixel in each channel: 0, or -mean/std after normalization.
    /// Augmentation pads with it.
    pub black: Vec<f32>,
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
        .map_err(|e| Error::data(format!("{what}: cannot decompress: {e}")))?;
    Ok(out)
}

/// The embedded digits, split with a fixed seed: 1437 train, 360 test.
pub fn digits() -> Result<Split> {
    let text = String::from_utf8(gunzip(DIGITS, "embedded digits")?)
        .map_err(|e| Error::data(e.to_string()))?;
    let mut rows: Vec<(Vec<f32>, u32)> = vec![];
    for (i, line) in text.lines().enumerate() {
        let v: Vec<u32> = line
            .split(',')
            .map(|t| t.trim().parse::<u32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::data(format!("embedded digits line {}: {e}", i + 1)))?;
        if v.len() != 65 || v[64] > 9 {
            return Err(Error::data(format!(
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
        black: vec![0.0],
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
        return Err(Error::data("not an IDX file: wrong magic number"));
    }
    if b[2] != 0x08 {
        return Err(Error::unsupported(format!(
            "IDX element type 0x{:02x} (ecc reads unsigned bytes, 0x08)",
            b[2]
        )));
    }
    let nd = b[3] as usize;
    if nd == 0 || nd > 4 || b.len() < 4 + 4 * nd {
        return Err(Error::data(format!(
            "IDX header with {nd} dimensions is truncated or invalid"
        )));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::data("IDX dims overflow"))?;
    let data = &b[4 + 4 * nd..];
    if data.len() != n {
        return Err(Error::data(format!(
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
        return Err(Error::data(format!(
            "expected images N x H x W and labels N, got {di:?} and {dl:?}"
        ))
        .in_file(images));
    }
    if di[0] != dl[0] {
        return Err(Error::data(format!(
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
        black: vec![0.0],
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

/// Bytes of one CIFAR-10 record: a label, then 3 x 32 x 32 pixels (channel planes R, G, B).
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Parse one CIFAR-10 binary batch: raw pixels (0-255) and labels.
pub fn parse_cifar_batch(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u32>)> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(Error::data(format!(
            "not a CIFAR-10 batch: {} bytes is not a whole number of {CIFAR_RECORD}-byte records (truncated?)",
            bytes.len()
        )));
    }
    let n = bytes.len() / CIFAR_RECORD;
    let (mut x, mut y) = (
        Vec::with_capacity(n * (CIFAR_RECORD - 1)),
        Vec::with_capacity(n),
    );
    for (i, r) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if r[0] > 9 {
            return Err(Error::data(format!(
                "record {i} has label {} (CIFAR-10 labels are 0 to 9): not a CIFAR-10 batch?",
                r[0]
            )));
        }
        y.push(r[0] as u32);
        x.extend_from_slice(&r[1..]);
    }
    Ok((x, y))
}

/// CIFAR-10 in its binary form in a folder: data_batch_1.bin to data_batch_5.bin (train) and
/// test_batch.bin. Pixels are normalized per channel with the training split's mean and
/// standard deviation (on the real CIFAR-10: means 0.4914, 0.4822, 0.4465 and standard
/// deviations 0.2470, 0.2435, 0.2616 of pixels in [0, 1]), the test split with the same.
pub fn cifar10(dir: &Path) -> Result<Split> {
    let read = |name: &str| -> Result<(Vec<u8>, Vec<u32>)> {
        let p = dir.join(name);
        let bytes = std::fs::read(&p).map_err(|e| {
            Error::new(ErrorKind::Io(format!(
                "{e} (CIFAR-10 is read from its binary version: data_batch_1.bin to data_batch_5.bin, test_batch.bin)"
            )))
            .in_file(&p)
        })?;
        parse_cifar_batch(&bytes).map_err(|e| e.in_file(&p))
    };
    let (mut xs, mut ys) = (vec![], vec![]);
    for k in 1..=5 {
        let (x, y) = read(&format!("data_batch_{k}.bin"))?;
        xs.extend(x);
        ys.extend(y);
    }
    let (xt, yt) = read("test_batch.bin")?;
    let plane = 32 * 32;
    let (mut mean, mut std) = (vec![0f64; 3], vec![0f64; 3]);
    for (c, (m, s)) in mean.iter_mut().zip(std.iter_mut()).enumerate() {
        let px = || {
            xs.chunks_exact(3 * plane)
                .flat_map(move |r| r[c * plane..(c + 1) * plane].iter())
                .map(|&p| p as f64 / 255.0)
        };
        let n = (ys.len() * plane) as f64;
        *m = px().sum::<f64>() / n;
        *s = (px().map(|p| (p - *m) * (p - *m)).sum::<f64>() / n)
            .sqrt()
            .max(1e-6);
    }
    let norm = |x: &[u8]| -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = (i / plane) % 3;
                ((p as f64 / 255.0 - mean[c]) / std[c]) as f32
            })
            .collect()
    };
    let black: Vec<f32> = (0..3).map(|c| (-mean[c] / std[c]) as f32).collect();
    let dims = vec![3, 32, 32];
    Ok(Split {
        name: "cifar10".into(),
        classes: 10,
        train: Dataset {
            dims: dims.clone(),
            x: norm(&xs),
            y: ys,
            black: black.clone(),
        },
        test: Dataset {
            dims,
            x: norm(&xt),
            y: yt,
            black,
        },
    })
}

/// The standard CIFAR augmentation of a batch in place (`x` holds samples of `dims`, C x H x
/// W): each sample is padded by 4 pixels of black on every side, cropped back to H x W at a
/// random offset, and flipped left-right with probability 1/2, all drawn from `rng`.
pub fn augment(x: &mut [f32], dims: &[usize], black: &[f32], rng: &mut impl rand::Rng) {
    const PAD: usize = 4;
    let [c, h, w] = dims else { return };
    let (c, h, w) = (*c, *h, *w);
    let size = c * h * w;
    let mut src = vec![0f32; size];
    for s in x.chunks_exact_mut(size.max(1)) {
        let (dy, dx) = (rng.gen_range(0..=2 * PAD), rng.gen_range(0..=2 * PAD));
        let flip = rng.gen_bool(0.5);
        src.copy_from_slice(s);
        for ch in 0..c {
            let fill = black.get(ch).or(black.first()).copied().unwrap_or(0.0);
            for i in 0..h {
                // Row i of the crop is row i + dy - PAD of the image (black outside).
                let sy = (i + dy).checked_sub(PAD).filter(|&r| r < h);
                for j in 0..w {
                    let jj = if flip { w - 1 - j } else { j };
                    let sx = (jj + dx).checked_sub(PAD).filter(|&q| q < w);
                    s[(ch * h + i) * w + j] = match (sy, sx) {
                        (Some(r), Some(q)) => src[(ch * h + r) * w + q],
                        _ => fill,
                    };
                }
            }
        }
    }
}

/// The kind of a data spec: `cifar10` of `cifar10:DIR`, `digits` of `digits`.
pub fn kind(spec: &str) -> &str {
    spec.split_once(':').map_or(spec, |(k, _)| k)
}

/// The dims of one sample (C, H, W) of a data spec (of [`load`], or `mnist` /
/// `fashion-mnist` without a folder), known from its kind without reading it: digits
/// 1x8x8, MNIST and Fashion-MNIST 1x28x28, CIFAR-10 3x32x32.
pub fn sample_dims(spec: &str) -> Result<Vec<usize>> {
    match kind(spec) {
        "digits" if spec == "digits" => Ok(vec![1, 8, 8]),
        "mnist" | "fashion-mnist" => Ok(vec![1, 28, 28]),
        "cifar10" if spec.contains(':') => Ok(vec![3, 32, 32]),
        _ => Err(unknown(spec)),
    }
}

/// The error of a data spec that names no data set ecc reads.
fn unknown(spec: &str) -> Error {
    Error::usage(format!(
        "--data '{spec}': expected digits, mnist:DIR, fashion-mnist:DIR or cifar10:DIR"
    ))
}

/// `digits`, `mnist:DIR`, `fashion-mnist:DIR` or `cifar10:DIR`.
pub fn load(spec: &str) -> Result<Split> {
    match spec.split_once(':') {
        None if spec == "digits" => digits(),
        Some(("mnist", dir)) => mnist_format("mnist", Path::new(dir)),
        Some(("fashion-mnist", dir)) => mnist_format("fashion-mnist", Path::new(dir)),
        Some(("cifar10", dir)) => cifar10(Path::new(dir)),
        _ => Err(unknown(spec)),
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

    /// A CIFAR-10 folder of `per` records per batch, pixel value (record + channel) % 256.
    fn write_cifar(dir: &Path, per: usize) {
        std::fs::create_dir_all(dir).unwrap();
        let batch = |seed: usize| -> Vec<u8> {
            (0..per)
                .flat_map(|r| {
                    let mut rec = vec![((r + seed) % 10) as u8];
                    rec.extend(
                        (0..3 * 1024)
                            .map(|i| ((r * 7 + seed + i / 1024 * 50 + i % 13) % 256) as u8),
                    );
                    rec
                })
                .collect()
        };
        for k in 1..=5 {
            std::fs::write(dir.join(format!("data_batch_{k}.bin")), batch(k)).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), batch(0)).unwrap();
    }

    #[test]
    fn cifar10_batches_load_normalized_and_bad_ones_fail_clearly() {
        let dir = std::env::temp_dir().join(format!("ecc-cifar-{}", std::process::id()));
        write_cifar(&dir, 6);
        let s = load(&format!("cifar10:{}", dir.display())).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.classes), (30, 6, 10));
        assert_eq!(s.train.dims, vec![3, 32, 32]);
        assert_eq!(s.train.y[..3], [1, 2, 3]);
        // Record 0 of batch 1: label 1, channel c pixel i = (1 + 50 c + i % 13) % 256.
        let want = |c: usize, i: usize| ((1 + 50 * c + i % 13) % 256) as f32 / 255.0;
        // Per channel the training pixels have mean 0 and standard deviation 1.
        for c in 0..3 {
            let px: Vec<f64> = s
                .train
                .x
                .chunks(3072)
                .flat_map(|r| r[c * 1024..(c + 1) * 1024].iter().map(|&p| p as f64))
                .collect();
            let m = px.iter().sum::<f64>() / px.len() as f64;
            let v = px.iter().map(|p| (p - m) * (p - m)).sum::<f64>() / px.len() as f64;
            assert!(
                m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4,
                "channel {c}: {m} {v}"
            );
            // Normalization is monotone: the first pixels keep their order, and black maps
            // to the channel's `black`.
            assert!((s.train.x[c * 1024] < s.train.x[c * 1024 + 1]) == (want(c, 0) < want(c, 1)));
            assert!(
                s.train.black[c]
                    < s.train
                        .x
                        .iter()
                        .skip(c * 1024)
                        .take(1024)
                        .fold(f32::MAX, |a, &b| a.min(b))
                        + 1e-6
            );
        }
        // A truncated batch, a batch of the wrong size, a bad label, a missing batch.
        let b1 = dir.join("data_batch_2.bin");
        let good = std::fs::read(&b1).unwrap();
        std::fs::write(&b1, &good[..good.len() - 10]).unwrap();
        let e = load(&format!("cifar10:{}", dir.display()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data_batch_2.bin") && e.contains("3073-byte records"),
            "{e}"
        );
        std::fs::write(&b1, [7u8; 100]).unwrap();
        assert!(load(&format!("cifar10:{}", dir.display())).is_err());
        let mut bad = good.clone();
        bad[CIFAR_RECORD] = 12;
        std::fs::write(&b1, &bad).unwrap();
        let e = load(&format!("cifar10:{}", dir.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 1 has label 12"), "{e}");
        std::fs::remove_file(&b1).unwrap();
        let e = load(&format!("cifar10:{}", dir.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_2.bin"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn augmentation_crops_pads_and_flips_deterministically() {
        use rand::SeedableRng;
        let dims = [2, 5, 6];
        let x0: Vec<f32> = (0..60).map(|i| i as f32).collect();
        let mut runs = vec![];
        for seed in [1, 1, 2] {
            let mut x = x0.repeat(8);
            augment(
                &mut x,
                &dims,
                &[-1.0, -2.0],
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            );
            runs.push(x);
        }
        assert_eq!(runs[0], runs[1], "same seed, same batch");
        assert_ne!(runs[0], runs[2]);
        let (mut flips, mut pads) = (0, 0);
        for s in runs[0].chunks(60) {
            // Each output row is a window of an input row (maybe mirrored) or padding, and
            // each channel is padded with its own black.
            for ch in 0..2 {
                for i in 0..5 {
                    let row = &s[(ch * 5 + i) * 6..][..6];
                    pads += row.iter().filter(|&&v| v == -1.0 - ch as f32).count();
                    let inside: Vec<f32> = row.iter().copied().filter(|&v| v >= 0.0).collect();
                    if inside.len() > 1 {
                        let d = inside[1] - inside[0];
                        assert!(d == 1.0 || d == -1.0, "{row:?}");
                        flips += (d < 0.0) as usize;
                        assert!(inside.iter().all(|v| (*v as usize) / 30 == ch));
                    }
                }
            }
        }
        assert!(flips > 0 && pads > 0, "flips {flips}, padded pixels {pads}");
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
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load("cifar100:/x")
            .unwrap_err()
            .to_string()
            .contains("expected digits"));
        assert!(load(&format!("mnist:{}", dir.display()))
            .unwrap_err()
            .to_string()
            .contains("fetch-data.sh"));
    }
}
