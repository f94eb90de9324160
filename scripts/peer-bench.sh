#!/usr/bin/env bash
# Peer benchmark (issue 7): the cases of `ecc bench train` in ecc and in PyTorch, one case per
# process (so max RSS is per case), alternating ecc and PyTorch for ROUNDS rounds; prints the
# median over rounds of each step time and the ratios. Both step one model at a time: PyTorch
# SGD alone, ecc SGD and EC-SGD in alternating blocks of 10 steps (ecc bench's protocol). PyTorch comes from PyPI into a virtual
# environment outside the source tree (~/.cache/ecc/torch-venv, several GB with its CUDA
# wheels; the CPU is all it uses here). Optional: never a test dependency.
#   scripts/peer-bench.sh [ROUNDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
runs=${2:-30}
venv=$(scripts/torch-venv.sh)
cargo build --release --quiet
out=$(mktemp -d)
cases=${ECC_PEER_CASES:-"mlp-784-64x4-10 mlp-784-512-512-10 cnn-28x28 resnet20-32x32"}
"$venv/bin/python" scripts/peer_bench.py --matmul > "$out/matmul.json"
for r in $(seq "$rounds"); do
  for c in $cases; do
    ./target/release/ecc bench train --case "$c" --runs "$runs" --optimizers sgd,ec-sgd --json \
      > "$out/ecc-$c-$r.json"
    "$venv/bin/python" scripts/peer_bench.py --case "$c" --runs "$runs" > "$out/torch-$c-$r.json"
  done
done
python3 - "$out" "$rounds" $cases <<'PY'
import json, sys, statistics as st
out, rounds, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
gf = json.load(open(f"{out}/matmul.json"))["matmul_gflops"]
print(f"f32 matmul 1024x1024 (torch, 2 threads): {gf:.0f} GFLOP/s; medians over {rounds} rounds")
print(f"{'case':<20} {'torch':>7} {'ecc sgd':>8} {'ecc ec':>8} {'sgd/torch':>9} {'ec/torch':>8} "
      f"{'ec/sgd':>7} {'floor':>6} {'sgd/floor':>9} {'RSS ecc':>8} {'RSS torch':>9}")
for c in cases:
    e = [json.load(open(f"{out}/ecc-{c}-{r}.json")) for r in range(1, rounds + 1)]
    t = [json.load(open(f"{out}/torch-{c}-{r}.json"))["cases"][0] for r in range(1, rounds + 1)]
    ms = lambda o: st.median(x["ms_per_step"] for run in e for x in run["cases"] if x["optimizer"] == o)
    sgd, ec = ms("sgd"), ms("ec-sgd")
    torch_ms = st.median(x["ms_per_step"] for x in t)
    gflop = e[0]["cases"][0]["gflop"]
    floor = gflop / gf * 1e3
    rss_e = max(x["max_rss_mib"] for run in e for x in run["cases"])
    rss_t = max(x["max_rss_mib"] for x in t)
    print(f"{c:<20} {torch_ms:7.3f} {sgd:8.3f} {ec:8.3f} {sgd/torch_ms:9.2f} {ec/torch_ms:8.2f} "
          f"{ec/sgd:7.3f} {floor:6.2f} {sgd/floor:9.2f} {rss_e:7.0f}M {rss_t:8.0f}M")
PY
rm -rf "$out"
