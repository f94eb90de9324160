#!/usr/bin/env bash
# Issue 18, every experiment in order, each resuming where it stopped (run it again after an
# interruption): the learning-rate sweep (scripts/run-bn-lr-sweep.sh), then the comparison
# of PlainNet-20 and ResNet-20 at each optimizer's best learning rate
# (experiments/bn-compare.json, its "lr" map from scripts/best-lr.py), then the depth sweep
# (experiments/bn-depth.json: PlainNet-8 and -14), then PlainNet-20 without BN, where
# Path-SGD applies (experiments/bn-free-plain20.json: PyTorch's default initialization),
# then a learning-rate probe of the same net at He's initialization
# (experiments/bn-free-he-lr*.json; Path-SGD, whose step divides by the paths' scale γ ~ 7e4
# at that initialization, at lrs of its own: bn-free-he-path-lr*.json) and the 3-seed
# comparison at the learning rates it chose (experiments/bn-free-he.json), with PlainNet-32 (experiments/bn-depth32.json: it
# costs as much as the BN-free runs and the probe together) around the probe, and last a
# one-seed probe of EC-SGD's and the control's learning rates at 32 layers
# (experiments/bn-depth32-lr-below.json, -above.json: one step of the sweep's grid below
# and above the rates the comparison uses) and EC-SGD at the probe's better rate, 0.1, on
# all 3 seeds (experiments/bn-depth32-ec0.1.json). In the
# background, twice, so that both cores train (each run is locked by the process training it):
#   RAYON_NUM_THREADS=1 nohup scripts/run-issue18.sh > issue18-1.log 2>&1 &
#   RAYON_NUM_THREADS=1 nohup scripts/run-issue18.sh > issue18-2.log 2>&1 &
# ECC=PATH runs another ecc binary (default ./target/release/ecc): a copy made before
# rebuilding keeps a queue on one build while the source changes (a build that rounds
# differently would otherwise take over at the next experiment).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/run-bn-lr-sweep.sh
# Each step: an experiment, and optionally the optimizers to train first (--only). PlainNet-32
# costs most (about 50 minutes a run on a 2-core AMD EPYC with two runs at once), so its
# comparison with the control comes before the probe, and its SGD and gsgd-ref runs last.
for step in bn-compare bn-depth bn-free-plain20 "bn-depth32 --only ec-sgd,sgd-ec-init" \
  bn-free-he-lr0.1 bn-free-he-lr0.01 bn-free-he-lr0.001 bn-free-he-path-lr100 \
  bn-free-he-path-lr1000 bn-free-he-path-lr30 bn-free-he-path-lr10 \
  bn-free-he-path-lr300 bn-free-he bn-depth32 bn-depth32-lr-below bn-depth32-lr-above \
  bn-depth32-ec0.1; do
  set -- $step
  e=$1
  shift
  if [ ! -f "experiments/$e.json" ]; then
    echo "experiments/$e.json not written yet: choose the learning rates with scripts/best-lr.py"
    exit 0
  fi
  "${ECC:-./target/release/ecc}" experiment "experiments/$e.json" "$@"
done
