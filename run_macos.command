#!/usr/bin/env bash
# First run: make .venv and install captioner. Every run: start the app (training enabled,
# datasets from ./data) and open the browser. Extra arguments go to `captioner serve`.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/captioner ]; then
    echo "First run: installing captioner into .venv (a few minutes)..."
    python3 -m venv .venv
    .venv/bin/python -m pip install --upgrade pip
    if [ "$(uname -s)" = Linux ]; then
        # PyTorch's CPU-only build: a ~200 MB download instead of several GB of CUDA
        # libraries, and half the app's memory. Falls back to PyPI's build if unreachable.
        .venv/bin/python -m pip install torch torchvision \
            --index-url https://download.pytorch.org/whl/cpu || true
    fi
    .venv/bin/python -m pip install .
fi
mkdir -p data
exec .venv/bin/captioner serve --open --data-root data "$@"
