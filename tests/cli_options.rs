//! `ecc train`'s options driven with random values (issue 14): NaN, infinities, zero,
//! negatives, huge numbers and garbage, alone and combined. Every run ends with exit 0, or
//! with exit 2 and exactly one line `error: ...` on stderr; never a panic, never a hang.

mod common;

use rand::seq::SliceRandom;
use rand::SeedableRng;

#[test]
fn random_train_options_exit_cleanly_with_one_line() {
    let epochs = ["1", "0", "-1", "1e3", "x", "18446744073709551616", ""];
    let batch = [
        "1",
        "7",
        "32",
        "0",
        "-3",
        "1000000000",
        "nan",
        "99999999999999999999",
    ];
    let lr = [
        "0.05", "0", "nan", "inf", "-inf", "-0.1", "1e300", "1e-300", "x",
    ];
    let momentum = ["0.9", "0", "1", "2", "-0.5", "nan", "inf"];
    let decay = ["0", "1e-4", "-1", "nan", "inf", "1e300"];
    let schedule = [
        "constant",
        "cosine",
        "step:1:0.5",
        "step:0:0.5",
        "step:2:nan",
        "exp:-1",
        "exp:nan",
        "bogus",
        "step:1",
    ];
    let optimizer = ["sgd", "ec-sgd", "path-sgd", "sgd-ec-init", "nope"];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..48 {
        // Every fourth case keeps all but one option valid, so that the checks of each
        // option are reached alone and not only behind another option's error.
        let pick = |set: &[&'static str], rng: &mut rand_chacha::ChaCha8Rng| {
            if case % 4 == 0 && rand::Rng::gen_bool(rng, 0.8) {
                set[0]
            } else {
                *set.choose(rng).unwrap()
            }
        };
        let args = [
            format!("--epochs={}", pick(&epochs, &mut rng)),
            format!("--batch={}", pick(&batch, &mut rng)),
            format!("--lr={}", pick(&lr, &mut rng)),
            format!("--momentum={}", pick(&momentum, &mut rng)),
            format!("--weight-decay={}", pick(&decay, &mut rng)),
            format!("--schedule={}", pick(&schedule, &mut rng)),
            format!("--optimizer={}", pick(&optimizer, &mut rng)),
        ];
        let mut all = vec!["train"];
        all.extend(args.iter().map(String::as_str));
        let (code, _, err) = common::ecc(&all);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        match code {
            0 => ok += 1,
            2 => {
                refused += 1;
                assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
                assert!(err.starts_with("error: "), "{args:?}: {err}");
            }
            _ => panic!("{args:?}: exit {code}: {err}"),
        }
    }
    // Both outcomes were reached: the generator is not all garbage or all valid.
    assert!(ok >= 2 && refused >= 20, "{ok} trained, {refused} refused");
}
