#!/usr/bin/env bash
# Issue 18's epoch times: the networks of its experiments, timed per training step in ecc
# (SGD, EC-SGD, gsgd-ref; `ecc bench train --model`, interleaved blocks of 10 steps) and in
# PyTorch (SGD, scripts/peer_bench.py --net, 2 threads), alternating for ROUNDS rounds;
# prints the medians, the ratios and the epoch time they imply on Fashion-MNIST (469 steps
# of batch 128; evaluation and data loading not included). PyTorch as in peer-bench.sh.
#   scripts/bench-epochs.sh [ROUNDS] [RUNS] [SPEC...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
runs=${2:-20}
shift $(( $# > 2 ? 2 : $# ))
specs=${*:-"plain:1x28x28-n3-w8.16.32 resnet:1x28x28-n3-w8.16.32"}
venv=$(scripts/torch-venv.sh)
cargo build --release --quiet
out=$(mktemp -d)
i=0
for s in $specs; do
  ./target/release/ecc new "$s" -o "$out/net$i.onnx" > /dev/null
  i=$((i + 1))
done
for r in $(seq "$rounds"); do
  i=0
  for s in $specs; do
    ./target/release/ecc bench train --model "$out/net$i.onnx" --batch 128 --runs "$runs" \
      --optimizers sgd,ec-sgd,gsgd-ref --json > "$out/ecc-$i-$r.json"
    "$venv/bin/python" scripts/peer_bench.py --net "$s" --batch 128 --runs "$runs" \
      > "$out/torch-$i-$r.json"
    i=$((i + 1))
  done
done
python3 - "$out" "$rounds" $specs <<'PY'
import json, sys, statistics as st
out, rounds, specs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"ms per step (batch 128), medians over {rounds} rounds; epoch = 469 steps")
print(f"{'network':<28} {'torch':>7} {'sgd':>7} {'ec-sgd':>7} {'gsgd-ref':>8} {'sgd/torch':>9} "
      f"{'ec/sgd':>6} {'ref/sgd':>7} {'epoch torch':>11} {'epoch sgd':>9} {'RSS ecc':>8}")
for i, s in enumerate(specs):
    e = [json.load(open(f"{out}/ecc-{i}-{r}.json")) for r in range(1, rounds + 1)]
    t = [json.load(open(f"{out}/torch-{i}-{r}.json"))["cases"][0] for r in range(1, rounds + 1)]
    ms = lambda o: st.median(x["ms_per_step"] for run in e for x in run["cases"] if x["optimizer"] == o)
    sgd, ec, ref = ms("sgd"), ms("ec-sgd"), ms("gsgd-ref")
    torch_ms = st.median(x["ms_per_step"] for x in t)
    rss = max(x["max_rss_mib"] for run in e for x in run["cases"])
    print(f"{s:<28} {torch_ms:7.1f} {sgd:7.1f} {ec:7.1f} {ref:8.1f} {sgd/torch_ms:9.2f} "
          f"{ec/sgd:6.3f} {ref/sgd:7.3f} {469*torch_ms/1e3:10.0f}s {469*sgd/1e3:8.0f}s {rss:7.0f}M")
PY
rm -rf "$out"
