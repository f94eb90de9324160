#!/usr/bin/env bash
# Regenerate the committed models in models/ with `ecc new` (deterministic: same seed, same bytes).
set -euo pipefail
cd "$(dirname "$0")/.."
ecc="cargo run --release --quiet --"
$ecc new mlp:64-32-32-10 --seed 0 -o models/mlp-digits.onnx
$ecc new mlp:784-64-64-64-64-10 --no-bias --seed 0 -o models/mlp-mnist.onnx
$ecc new cnn:1x28x28-c8-p-c16-p-32-10 --seed 0 -o models/cnn-mnist.onnx
# A trained model for the fine-tuning experiment (experiments/finetune-mlp.json): mlp-mnist
# trained 3 epochs with SGD on MNIST (needs scripts/fetch-data.sh).
$ecc train models/mlp-mnist.onnx --data "mnist:${ECC_DATA:-$HOME/.cache/ecc/data}/mnist" \
  --optimizer sgd --epochs 3 --batch 64 --lr 0.1 --momentum 0 --seed 0 -o models/mlp-mnist-sgd.onnx
