"""Quality benchmark: train for a fixed time, then measure validation loss.

    python bench/quality.py --minutes 10                     # the defaults
    python bench/quality.py --minutes 60 --preset quality    # the quality preset
    python bench/quality.py --minutes 10 -- --cell lstm      # any train flags after --

It runs `char-rnn train --max-time` into a fresh run folder, then `char-rnn eval` on
the best checkpoint over the whole validation text (the last 10 % of the corpus) with
the state carried, and over independent 256-character windows (the protocol that
transformer baselines report). Prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from char_rnn.config import ModelConfig
from char_rnn.model.network import CharRNNModel


def char_rnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "char_rnn", *args], text=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--preset", help="a training preset (default: none, i.e. the defaults)")
    parser.add_argument("--out", default=None, help="run folder (default runs/quality-<time>)")
    parser.add_argument("train_flags", nargs="*", help="extra flags for char-rnn train, after --")
    args = parser.parse_args()
    out = args.out or f"runs/quality-{time.strftime('%Y%m%d-%H%M%S')}"
    flags = ["train", "--out", out, "--max-time", str(args.minutes * 60), "--quiet"]
    if args.preset:
        flags += ["--preset", args.preset]
    started = time.monotonic()
    trained = char_rnn(*flags, *args.train_flags)
    if trained.returncode != 0:
        print(trained.stderr, file=sys.stderr)
        return trained.returncode
    wall = time.monotonic() - started
    evaluated = char_rnn("eval", out, "--checkpoint", "best", "--window", "256", "--json")
    if evaluated.returncode != 0:
        print(evaluated.stderr, file=sys.stderr)
        return evaluated.returncode
    figures = json.loads(evaluated.stdout)
    config = json.loads((Path(out) / "config.json").read_text())
    metrics = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = max((m["step"] for m in metrics), default=0)
    speeds = [m["chars_per_s"] for m in metrics if m.get("kind") == "train"]
    report = {
        "run": out,
        "minutes": args.minutes,
        "train_wall_s": round(wall, 1),
        "steps": steps,
        "median_chars_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "model": config["model"],
        "parameters": CharRNNModel(ModelConfig(**config["model"])).num_parameters(),
        "val_loss": round(figures["loss"], 4),
        "val_bpc": round(figures["bpc"], 4),
        "val_window_256_loss": round(figures["window_256_loss"], 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
