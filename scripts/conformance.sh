#!/usr/bin/env bash
# ecc over the ONNX test suites (issue 16): pass / wrong / rejected / panic per suite and per op.
#   scripts/conformance.sh [--list wrong|panic|all] [--json OUT]
# Suites, all from packages with pinned sums, fetched by `scripts/fetch-fixtures.sh
# --conformance` into the fixture cache ($ECC_FIXTURES, default ~/.cache/ecc/fixtures):
# the onnx 1.23.2 wheel's node cases (written out by onnx's own case collector), its
# `simple` cases and its pytorch-converted / pytorch-operator cases, and Debian's
# libonnx-testdata 1.12.0-2 (node, simple, pytorch-*; left out where apt is missing).
# `real` cases (URLs only) and `light` (tests/onnx_models.rs checks them) are not run.
# The runner is scripts/conformance.py. Exit status 1 when any case is wrong or panics.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${ECC_FIXTURES:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/fixtures}"
VENV="${ECC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/venv}"
CONF="$FIX/conformance"

scripts/fetch-fixtures.sh --conformance >/dev/null
suites=("$CONF/wheel-node" "$CONF/wheel-simple" "$FIX/onnx/pytorch-converted" "$FIX/onnx/pytorch-operator")
if [ -f "$CONF/debian/.complete" ]; then
  for s in node simple pytorch-converted pytorch-operator; do suites+=("$CONF/debian/debian-$s"); done
fi

cargo build --release --quiet
"$VENV/bin/python" scripts/conformance.py target/release/ecc "${suites[@]}" "$@"
