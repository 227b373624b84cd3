"""Fine-tuning benchmark: a small text learned from a Shakespeare model or from scratch.

    python bench/fine_tune.py --small constitution.txt
    python bench/fine_tune.py --small constitution.txt --base runs/shakespeare-10min

Trains the defaults on Shakespeare for --base-minutes (or reuses --base), then, on the
small text for --minutes each: from scratch with the defaults; from the Shakespeare run at
each learning rate of --lrs (new characters' rows as PyTorch initialises them); and at the
first of them with those rows made from the mean of the known ones instead. Prints one line
per run with its best validation loss (the last 10 % of the small text) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from char_rnn.api import train_run
from char_rnn.train import fine_tune


def trained(out: Path, **options) -> float:
    result = train_run(out=str(out), quiet=True, **options)
    return result.best_val_loss


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", required=True, help="the small text to learn")
    parser.add_argument("--base", help="a Shakespeare run to start from (default: train one)")
    parser.add_argument("--base-minutes", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--lrs", default="1e-3,3e-3,3e-4", help="fine-tuning learning rates to compare")
    parser.add_argument("--out", default=f"runs/fine-tune-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = Path(args.out)
    base = Path(args.base) if args.base else out / "base"
    if not args.base:
        loss = trained(base, data="shakespeare", max_time=args.base_minutes * 60)
        print(f"base: Shakespeare {args.base_minutes:g} min, best validation loss {loss:.4f}", flush=True)
    seconds = args.minutes * 60
    figures = {"scratch": trained(out / "scratch", data=args.small, max_time=seconds)}
    print(f"scratch, lr 3e-3 (the defaults): {figures['scratch']:.4f}", flush=True)
    lrs = [float(lr) for lr in args.lrs.split(",")]
    for lr in lrs:
        name = f"init_from lr {lr:g}"
        figures[name] = trained(
            out / f"tuned-{lr:g}", data=args.small, init_from=str(base), lr=lr, max_time=seconds
        )
        print(f"{name}: {figures[name]:.4f}", flush=True)
    fine_tune.NEW_ROWS = "mean"
    name = f"init_from lr {lrs[0]:g}, new rows from the mean"
    figures[name] = trained(
        out / "tuned-mean-rows", data=args.small, init_from=str(base), lr=lrs[0], max_time=seconds
    )
    print(f"{name}: {figures[name]:.4f}", flush=True)
    print(json.dumps({"minutes": args.minutes, "small": args.small, "best_val_loss": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
