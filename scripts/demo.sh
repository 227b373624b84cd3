#!/usr/bin/env bash
# The main job on a fresh machine: install, train on tiny Shakespeare for a few
# minutes, then print generated text. DEMO_SECONDS sets the training time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Use the offline copy of the corpus when it is beside the checkout; otherwise
# char-rnn downloads it (checksum-verified) into the user cache.
if [ -z "${CHAR_RNN_DATA:-}" ] && [ -f ../shared/data/shakespeare.txt ]; then
  export CHAR_RNN_DATA=../shared/data
fi
run="runs/demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/char-rnn train --max-time "${DEMO_SECONDS:-180}" --out "$run"
.venv/bin/char-rnn generate "$run" --start "ROMEO:" --length 600 --temperature 0.8 --checkpoint best
