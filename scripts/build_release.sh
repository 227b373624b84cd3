#!/usr/bin/env bash
# Builds the sdist and the wheel into dist/ and checks them for the package index:
# onnxruntime-web's files first (npm, once), then python -m build, then twine check.
# Upload afterwards with: twine upload dist/*
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

"$PYTHON" scripts/vendor_web_runtime.py
rm -rf dist
"$PYTHON" -m build
"$PYTHON" -m twine check --strict dist/*
ls -l dist
