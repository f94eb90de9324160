#!/usr/bin/env bash
# The PyTorch of the peer benchmarks (peer-bench.sh, bench-epochs.sh): a virtual environment
# outside the source tree ($ECC_TORCH_VENV or ~/.cache/ecc/torch-venv) with torch 2.15.0 from
# PyPI (several GB with its CUDA wheels; the CPU is all it uses here), made once. Prints
# its path.
set -euo pipefail
venv=${ECC_TORCH_VENV:-$HOME/.cache/ecc/torch-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "torch==2.15.0" >&2
fi
echo "$venv"
