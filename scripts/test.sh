#!/usr/bin/env bash
# The test suite, exactly as CI runs it (.ci/run calls this). On a fresh machine it fetches
# what it needs: the package-provided test models and data sets (pinned sha256) and the
# onnxruntime venv and the PyTorch venv of the Python package's tests, all into a cache outside
# the source tree (~/.cache/ecc).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-fixtures.sh
scripts/fetch-data.sh
scripts/setup-onnxruntime.sh

cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
# The PyTorch package's tests (PyTorch from PyPI in a cached venv).
scripts/test-python.sh
