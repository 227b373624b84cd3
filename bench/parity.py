"""Learning parity: the fast path (bf16, fused kernels) against fp32, same seed and data order.

    python bench/parity.py                          # the tutorial preset, 300 steps
    python bench/parity.py --steps 100 -- --units 256

Trains the same run twice, `--precision fp32` and `--precision bf16`, each for `--steps`
steps, and prints both validation losses (the whole held-out text, state carried) and their
relative difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def train(out: Path, precision: str, steps: int, preset: str, extra: list[str]) -> tuple[float, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "char_rnn", "train", "--preset", preset, "--max-steps", str(steps),
         "--precision", precision, "--out", str(out), "--quiet", *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(done.stderr)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if m["kind"] == "val" and m["step"] == steps]
    return val[-1], time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--preset", default="tutorial")
    parser.add_argument("--out", type=Path, default=Path(f"runs/parity-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("train_flags", nargs="*", help="extra flags for char-rnn train, after --")
    args = parser.parse_args()
    losses = {}
    for precision in ("fp32", "bf16"):
        loss, seconds = train(args.out / precision, precision, args.steps, args.preset, args.train_flags)
        losses[precision] = loss
        print(
            f"{precision}: validation loss {loss:.4f} after {args.steps} steps ({seconds:.0f} s)", flush=True
        )
    gap = (losses["bf16"] - losses["fp32"]) / losses["fp32"]
    print(f"bf16 vs fp32: {gap:+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
