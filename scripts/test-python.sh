#!/usr/bin/env bash
# Tests of the PyTorch package (python/ecc_torch, issue 17) on CPU: PyTorch and the
# exporter's dependency (onnxscript) from PyPI into the venv the peer bench uses
# (~/.cache/ecc/torch-venv, outside the source tree; made once, several GB with the CUDA
# wheels PyPI's torch depends on), the package pip-installed from the checkout, and ecc's
# release build (the tests run `ecc convert`). scripts/test.sh calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ECC_TORCH_VENV:-$HOME/.cache/ecc/torch-venv}
if ! "$venv/bin/python" -c "import torch, onnxscript, setuptools" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==2.15.0" "onnxscript==0.7.2" "onnx==1.23.2" setuptools
fi
"$venv/bin/pip" install -q --no-deps --no-build-isolation ./python
cargo build --release --quiet
# Import the installed package, not the source folder.
cd python/tests
ECC_BIN=../../target/release/ecc "$venv/bin/python" -m unittest -v test_ecc_torch 2>&1
