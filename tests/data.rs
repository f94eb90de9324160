//! MNIST and Fashion-MNIST from the cache of scripts/fetch-data.sh: counts, shapes, labels,
//! and clean errors on corrupt copies.

mod common;

use ecc::data::{load, load_idx};

fn data_dir() -> Option<std::path::PathBuf> {
    common::data()
}

#[test]
fn mnist_and_fashion_mnist_load() {
    let Some(d) = data_dir() else { return };
    for name in ["mnist", "fashion-mnist"] {
        let s = load(&format!("{name}:{}", d.join(name).display())).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (60000, 10000), "{name}");
        assert_eq!(s.train.dims, vec![1, 28, 28]);
        assert!(s.train.y.iter().all(|&y| y < 10));
        for c in 0..10 {
            assert!(
                s.test.y.iter().filter(|&&y| y == c).count() >= 800,
                "{name}: class {c}"
            );
        }
        let mean = s.test.x.iter().map(|&p| p as f64).sum::<f64>() / s.test.x.len() as f64;
        println!("{name}: 60000/10000 samples, mean test pixel {mean:.3}");
    }
}

#[test]
fn corrupt_copies_fail_clearly() {
    let Some(d) = data_dir() else { return };
    let tmp = common::Scratch::new("data");
    let images = std::fs::read(d.join("mnist/t10k-images-idx3-ubyte")).unwrap();
    let labels = d.join("mnist/t10k-labels-idx1-ubyte");
    std::fs::write(tmp.join("short"), &images[..images.len() - 100]).unwrap();
    let e = load_idx(&tmp.join("short"), &labels)
        .unwrap_err()
        .to_string();
    assert!(e.contains("short") && e.contains("truncated"), "{e}");
    let mut bad = images.clone();
    bad[2] = 0x0b;
    std::fs::write(tmp.join("badtype"), &bad).unwrap();
    assert!(load_idx(&tmp.join("badtype"), &labels)
        .unwrap_err()
        .to_string()
        .contains("element type"));
    let train_labels = d.join("mnist/train-labels-idx1-ubyte");
    let e = load_idx(&d.join("mnist/t10k-images-idx3-ubyte"), &train_labels)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10000 images but 60000 labels"), "{e}");
}
