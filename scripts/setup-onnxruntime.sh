#!/usr/bin/env bash
# Make the Python environment of the independent runtime used by tests/ort.rs: onnxruntime
# and the ONNX checker, pinned, in a virtual environment outside the source tree:
#   $ECC_VENV (default ${XDG_CACHE_HOME:-$HOME/.cache}/ecc/venv)
set -euo pipefail
VENV="${ECC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/venv}"
PKGS="onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6"
STAMP="$PKGS"
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.ecc-stamp" ] && [ "$(cat "$VENV/.ecc-stamp")" = "$STAMP" ]; then
  echo "onnxruntime venv: up to date in $VENV"
  exit 0
fi
python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $PKGS
echo "$STAMP" > "$VENV/.ecc-stamp"
echo "onnxruntime venv: $("$VENV/bin/python" -c 'import onnx, onnxruntime; print("onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)') in $VENV"
