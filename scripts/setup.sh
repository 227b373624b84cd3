#!/usr/bin/env bash
# Creates .venv and installs char-rnn into it with the CPU build of PyTorch.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  # A wheel already on this machine (pip's find-links) wins; otherwise take the CPU
  # build from PyTorch's own index so that pip never pulls a multi-GB CUDA build.
  pip install --no-deps --no-index "torch==$TORCH_VERSION" 2>/dev/null \
    || pip install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
         --extra-index-url https://pypi.org/simple
fi
pip install "torch==$TORCH_VERSION" -e ".[dev]"

# onnxruntime-web's browser files for `char-rnn export --format web` (npm, once; not in git).
if command -v npm >/dev/null; then
  .venv/bin/python scripts/vendor_web_runtime.py \
    || echo "setup: onnxruntime-web not fetched; export --format web needs: python scripts/vendor_web_runtime.py" >&2
else
  echo "setup: no npm, so export --format web is unavailable until: python scripts/vendor_web_runtime.py" >&2
fi
