#!/usr/bin/env bash
# ecc over the ONNX test suites (issue 16): pass / wrong / rejected / panic per suite and per op.
#   scripts/conformance.sh [--list wrong|panic|all] [--json OUT]
# Suites, all from packages, pinned, cached outside the source tree
# ($ECC_FIXTURES, default ~/.cache/ecc/fixtures):
#   wheel-node     the onnx 1.23.2 wheel's node cases, written out by onnx's own case
#                  collector (scripts/conformance-cases.py) in the venv of
#                  scripts/setup-onnxruntime.sh (pinned onnx, onnxruntime, numpy)
#   wheel-simple   the wheel's `simple` model cases (files in the installed package)
#   pytorch-*      the wheel's pytorch-converted and pytorch-operator cases
#                  (scripts/fetch-fixtures.sh, pinned wheel sum)
#   debian-*       Debian's libonnx-testdata 1.12.0-2 (node, simple, pytorch-*), by
#                  `apt-get download`, pinned sum; skipped with a line where apt is missing
# `real` cases (URLs only) and `light` (tests/onnx_models.rs checks them) are not run.
# Exit status 1 when any case is wrong or panics.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX="${ECC_FIXTURES:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/fixtures}"
VENV="${ECC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/venv}"
CONF="$FIX/conformance"
DEB=libonnx-testdata_1.12.0-2_all.deb
DEB_SHA256=7dc0912e02f79ece102331411a751b091bc0e191c9fb1287f8cdfbe5530f6027

scripts/setup-onnxruntime.sh >/dev/null
scripts/fetch-fixtures.sh >/dev/null
mkdir -p "$CONF"

onnx_version=$("$VENV/bin/python" -c 'import onnx; print(onnx.__version__)')
if [ ! -f "$CONF/wheel-node/.complete" ] || [ "$(cat "$CONF/wheel-node/.complete")" != "$onnx_version" ]; then
  "$VENV/bin/python" scripts/conformance-cases.py "$CONF/wheel-node"
  echo "$onnx_version" > "$CONF/wheel-node/.complete"
fi
simple=$("$VENV/bin/python" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/simple"))')
rm -rf "$CONF/wheel-simple" && cp -r "$simple" "$CONF/wheel-simple"

suites=("$CONF/wheel-node" "$CONF/wheel-simple" "$FIX/onnx/pytorch-converted" "$FIX/onnx/pytorch-operator")
if [ ! -f "$CONF/debian/.complete" ] || [ "$(cat "$CONF/debian/.complete")" != "$DEB_SHA256" ]; then
  if command -v apt-get >/dev/null && (cd "$CONF" && apt-get download -q libonnx-testdata=1.12.0-2 >/dev/null 2>&1); then
    got=$(sha256sum "$CONF/$DEB" | cut -d' ' -f1)
    if [ "$got" != "$DEB_SHA256" ]; then
      echo "conformance: sha256 mismatch for $DEB: got $got, expected $DEB_SHA256" >&2
      exit 1
    fi
    rm -rf "$CONF/debian" "$CONF/deb-x" && dpkg -x "$CONF/$DEB" "$CONF/deb-x"
    mkdir -p "$CONF/debian"
    for s in node simple pytorch-converted pytorch-operator; do
      mv "$CONF/deb-x/usr/share/libonnx-testdata/data/$s" "$CONF/debian/debian-$s"
    done
    rm -rf "$CONF/deb-x" "$CONF/$DEB"
    echo "$DEB_SHA256" > "$CONF/debian/.complete"
  else
    echo "conformance: Debian's libonnx-testdata not available here (apt-get download failed); its suites are left out" >&2
  fi
fi
if [ -f "$CONF/debian/.complete" ]; then
  for s in node simple pytorch-converted pytorch-operator; do suites+=("$CONF/debian/debian-$s"); done
fi

cargo build --release --quiet
"$VENV/bin/python" scripts/conformance.py target/release/ecc "${suites[@]}" "$@"
