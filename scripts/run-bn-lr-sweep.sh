#!/usr/bin/env bash
# Issue 18, item 3: the learning-rate sweep on one depth (PlainNet-20 with BN, widths
# 8/16/32, Fashion-MNIST, 5 epochs, lr x0.1 after epochs 2 and 4, batch 128, no momentum:
# the reference's schedule shape, scaled), SGD, EC-SGD, the control sgd-ec-init and the
# reference's heuristic gsgd-ref, seed 0, at lr 0.1, 1.0, 0.3 and 0.03
# (experiments/bn-plain20-lr*.json). Resumes where it stopped; run it in the background:
# nohup scripts/run-bn-lr-sweep.sh > sweep.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
# With ECC set, that binary runs (scripts/run-issue18.sh); otherwise the checkout's build.
[ -n "${ECC:-}" ] || cargo build --release --quiet
for lr in 0.1 1.0 0.3 0.03; do
  "${ECC:-./target/release/ecc}" experiment "experiments/bn-plain20-lr$lr.json"
done
