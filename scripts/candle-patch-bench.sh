#!/usr/bin/env bash
# Issue 12: what candle's gradient store costs a training step. candle-core's backprop
# (0.9.2, src/backprop.rs) adds every gradient to a new zero tensor the first time it
# stores it (`or_insert` then `add`: a fill, a read of both and a write, single-threaded).
# patches/candle-core-0.9.2-accumulate.patch stores the first gradient as it is (when it is
# contiguous and has the tensor's shape, dtype and device; otherwise as before) at the 41
# sites of that form. This script builds ecc at HEAD twice, with the registry's
# candle-core and with the patched copy, both outside the checkout (in the cache; nothing
# in the working tree changes), checks that one epoch of a small BN ResNet gives the same
# metrics, and alternates `ecc bench train` on the case between the two builds (the
# builds are kept: a second run with the same HEAD only measures). The working tree's
# uncommitted changes are not in the patched build: commit first.
#   scripts/candle-patch-bench.sh [PAIRS] [RUNS] [CASE]
# The patch is not applied to ecc's own build: carrying a patched candle-core is a
# maintenance decision (issue 12's note).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-4}
runs=${2:-5}
case=${3:-resnet20-32x32}
work=${XDG_CACHE_HOME:-$HOME/.cache}/ecc/candle-patch
host=$(rustc -vV | sed -n 's/^host: //p')
src=$(cargo metadata --format-version 1 --locked --filter-platform "$host" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "candle-core"))')
src=$(dirname "$src")
case "$src" in */candle-core-0.9.2) ;; *) echo "the patch is for candle-core 0.9.2, found $src" >&2; exit 2 ;; esac
# The copies are made again only when HEAD or the patch changed (a rebuild takes minutes).
stamp="$(git rev-parse HEAD) $(sha256sum patches/candle-core-0.9.2-accumulate.patch | cut -c1-16)"
if [ "$(cat "$work/stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$work/candle-core" "$work/ecc" "$work/stamp"
  mkdir -p "$work/ecc"
  cp -r "$src" "$work/candle-core"
  chmod -R u+w "$work/candle-core"
  patch --quiet -d "$work/candle-core" -p1 < patches/candle-core-0.9.2-accumulate.patch
  git archive HEAD | tar -x -C "$work/ecc"
  printf '\n[patch.crates-io]\ncandle-core = { path = "%s" }\n' "$work/candle-core" >> "$work/ecc/Cargo.toml"
  echo "$stamp" > "$work/stamp"
fi
echo "building both (the patched one in $work/target)..." >&2
cargo build --release --quiet
(cd "$work/ecc" && CARGO_TARGET_DIR="$work/target" cargo build --release --quiet)
plain=./target/release/ecc
patched=$work/target/release/ecc
# Same results: one epoch of a small BN ResNet on the embedded digits, every optimizer.
tmp=$(mktemp -d)
"$plain" new 'resnet:1x8x8-n1-w4.8.8' -o "$tmp/r.onnx" > /dev/null
for b in plain patched; do
  bin=$plain
  [ "$b" = patched ] && bin=$patched
  "$bin" train "$tmp/r.onnx" --optimizer all --epochs 1 --metrics "$tmp/$b.jsonl" > /dev/null
done
python3 - "$tmp" <<'PY'
import json, sys
d = sys.argv[1]
keys = ("optimizer", "epoch", "train_loss", "test_loss", "test_accuracy")
rows = lambda b: [tuple(json.loads(l).get(k) for k in keys) for l in open(f"{d}/{b}.jsonl")]
same = rows("plain") == rows("patched")
print(f"metrics of one epoch, every optimizer: {'the same' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PY
rm -rf "$tmp"
for i in $(seq "$pairs"); do
  for b in plain patched; do
    bin=$plain
    [ "$b" = patched ] && bin=$patched
    "$bin" bench train --case "$case" --runs "$runs" --optimizers sgd --json |
      python3 -c "import json, sys; print('$b', round(json.load(sys.stdin)['cases'][0]['ms_per_step'], 1), 'ms/step')"
  done
done
