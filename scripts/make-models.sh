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
# Trained models for the fine-tuning experiments (experiments/finetune-*.json): cnn-mnist
# trained 2 epochs with SGD on MNIST, and a narrow ResNet-8 with BatchNorm trained 2 epochs
# on Fashion-MNIST.
$ecc train models/cnn-mnist.onnx --data "mnist:${ECC_DATA:-$HOME/.cache/ecc/data}/mnist" \
  --optimizer sgd --epochs 2 --batch 64 --lr 0.1 --momentum 0 --seed 0 -o models/cnn-mnist-sgd.onnx
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$ecc new resnet:1x28x28-n1-w8.16.32 --seed 0 -o "$tmp/resnet8.onnx"
$ecc train "$tmp/resnet8.onnx" --data "fashion-mnist:${ECC_DATA:-$HOME/.cache/ecc/data}/fashion-mnist" \
  --optimizer sgd --epochs 2 --batch 64 --lr 0.1 --momentum 0 --seed 0 -o models/resnet8-fashion-sgd.onnx
