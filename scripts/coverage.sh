#!/usr/bin/env bash
# The EC pass's coverage per model (docs/ec-dag.md §4, README): parameters updated in path
# space, rescalings quotiented out, radial directions, as `ecc convert` reports them in the
# plan (.ec.json). Generated models always; zoo models when the fixture cache has them
# (scripts/fetch-fixtures.sh); torchvision resnet18 exports when
# scripts/make-torchvision-resnet18.py has written them. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
ECC=target/release/ecc
CACHE="${ECC_CACHE:-$HOME/.cache/ecc}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

models=()
for spec in "resnet:3x32x32-n3" "plain:3x32x32-n3" "cnn:1x28x28-c8-b-p-c16-b-p-10"; do
  f="$WORK/$(echo "$spec" | tr ':.' '__').onnx"
  $ECC new "$spec" -o "$f" >/dev/null
  models+=("$spec=$f")
done
for m in models/cnn-mnist.onnx models/mlp-mnist.onnx; do models+=("$m=$m"); done
LIGHT="$CACHE/fixtures/onnx/light"
for z in resnet50 inception_v2 densenet121 squeezenet inception_v1 vgg19; do
  [ -f "$LIGHT/light_$z.onnx" ] && models+=("zoo $z=$LIGHT/light_$z.onnx")
done
TV="$CACHE/fixtures/torchvision"
[ -f "$TV/resnet18-bn.onnx" ] && models+=("torchvision resnet18, BN kept=$TV/resnet18-bn.onnx")
[ -f "$TV/resnet18-folded.onnx" ] && models+=("torchvision resnet18, BN folded (default export)=$TV/resnet18-folded.onnx")
[ -f tests/fixtures/bn-resnet/model-eval.onnx ] && models+=("PyTorch residual CNN, BN folded=tests/fixtures/bn-resnet/model-eval.onnx")

echo "| model | m | H | radial | blocks: chain / star / DAG | coverage (params) | unit_coverage (H) |"
echo "|---|---:|---:|---:|---|---:|---:|"
i=0
for entry in "${models[@]}"; do
  name="${entry%%=*}"; file="${entry#*=}"; i=$((i+1))
  out="$WORK/c$i"
  $ECC convert "$file" -o "$out" >/dev/null
  python3 - "$name" "$out"/*.ec.json <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
p = json.load(open(path))
kinds = [sum(1 for b in p["blocks"] if b["kind"] == k) for k in ("chain", "star", "dag")]
print(f"| {name} | {p['params']:,} | {p['rescalings']:,} | {p['radial']:,} | {' / '.join(map(str, kinds))} | {100*p['coverage']:.1f}% | {100*p['unit_coverage']:.1f}% |")
PY
done
