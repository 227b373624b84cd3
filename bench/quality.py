"""Quality benchmark: train for a fixed time, then measure validation loss.

    python bench/quality.py --minutes 10                     # the defaults
    python bench/quality.py --minutes 60 --preset quality    # the quality preset
    python bench/quality.py --minutes 10 -- --cell lstm      # any train flags after --
    python bench/quality.py --minutes 30 --members 3         # three 10-minute runs, as one

It runs `char-rnn train --max-time` into a fresh run folder, then `char-rnn eval` on
the best checkpoint over the whole validation text (the last 10 % of the corpus) with
the state carried, and over independent 256-character windows (the protocol that
transformer baselines report). Prints one JSON line with the figures.

With --members N, the minutes are shared among N runs trained one after the other, seeds 0
to N-1 (RUN-m0, RUN-m1, ...), and the figures are those of the ensemble that reads them as
one model (`char-rnn eval RUN-m0 --ensemble RUN-m1 ...`), each member's beside them.
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
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of all runs together")
    parser.add_argument("--members", type=int, default=1, help="runs trained in turn and read as one")
    parser.add_argument("--preset", help="a training preset (default: none, i.e. the defaults)")
    parser.add_argument("--out", default=None, help="run folder (default runs/quality-<time>)")
    parser.add_argument("train_flags", nargs="*", help="extra flags for char-rnn train, after --")
    args = parser.parse_args()
    out = args.out or f"runs/quality-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.members < 2:
        report = train_run(out, args.minutes, args.preset, args.train_flags)
        report.update(evaluation(out))
        print(json.dumps(report))
        return 0
    members = [f"{out}-m{seed}" for seed in range(args.members)]
    reports = []
    for seed, member in enumerate(members):
        flags = ["--seed", str(seed), *args.train_flags]
        trained = train_run(member, args.minutes / args.members, args.preset, flags)
        reports.append({**trained, **evaluation(member)})
    ensemble = {"members": reports, "minutes": args.minutes, **evaluation(members[0], members[1:])}
    print(json.dumps(ensemble))
    return 0


def train_run(out: str, minutes: float, preset: str | None, train_flags: list[str]) -> dict:
    flags = ["train", "--out", out, "--max-time", str(minutes * 60), "--quiet"]
    if preset:
        flags += ["--preset", preset]
    started = time.monotonic()
    trained = char_rnn(*flags, *train_flags)
    if trained.returncode != 0:
        raise SystemExit(trained.stderr)
    wall = time.monotonic() - started
    config = json.loads((Path(out) / "config.json").read_text())
    metrics = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = max((m["step"] for m in metrics), default=0)
    speeds = [m["chars_per_s"] for m in metrics if m.get("kind") == "train"]
    return {
        "run": out,
        "minutes": minutes,
        "train_wall_s": round(wall, 1),
        "steps": steps,
        "median_chars_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "model": config["model"],
        "parameters": CharRNNModel(ModelConfig(**config["model"])).num_parameters(),
    }


def evaluation(run: str, ensemble: list[str] = ()) -> dict:
    """The best weights' figures on the validation text; with `ensemble`, those of the runs
    read as one model."""
    others = ["--ensemble", *ensemble] if ensemble else []
    evaluated = char_rnn("eval", run, "--checkpoint", "best", "--window", "256", "--json", *others)
    if evaluated.returncode != 0:
        raise SystemExit(evaluated.stderr)
    figures = json.loads(evaluated.stdout)
    return {
        "val_loss": round(figures["loss"], 4),
        "val_bpc": round(figures["bpc"], 4),
        "val_window_256_loss": round(figures["window_256_loss"], 4),
    }


if __name__ == "__main__":
    sys.exit(main())
