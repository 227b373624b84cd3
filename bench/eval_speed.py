"""Evaluation speed: the static validation loss of a run's model read in different layouts,
each with its time, against one stream reading the whole text (the exact figure).

    python bench/eval_speed.py runs/quality --checkpoint best
    python bench/eval_speed.py runs/quality --checkpoint best --skip-sequential   # faster

Layouts: one stream (sequential, fp32); evaluation as it was before warm-ups (16 streams
without warm-up, fp32, and the 256-window figure computed too, its time included); the
default that `char-rnn eval` runs (char_rnn.evaluate.EVAL_STREAMS streams, EVAL_WARMUP
characters of warm-up, in the run's training precision: bf16 where the CPU has native bf16);
the default layout in fp32; and twice the streams. Prints one line per layout, then one JSON
line with all the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from char_rnn import CharRNN
from char_rnn.evaluate import EVAL_STREAMS, EVAL_WARMUP, evaluate, evaluate_windows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="best")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-sequential", action="store_true", help="no one-stream reference")
    args = parser.parse_args()
    model = CharRNN.load(args.run, which=args.checkpoint, device=args.device)
    ids = model.run_text("val")
    fp32, own = torch.float32, model.eval_dtype
    layouts = [("before: 16 streams, no warm-up, + windows", 16, 0, fp32)]
    if not args.skip_sequential:
        layouts.insert(0, ("sequential: one stream", 1, 0, fp32))
    default = f"{EVAL_STREAMS} streams, warm-up {EVAL_WARMUP}"
    layouts += [(f"default: {default}, {own}", EVAL_STREAMS, EVAL_WARMUP, own)]
    if own != fp32:
        layouts += [(f"{default}, {fp32}", EVAL_STREAMS, EVAL_WARMUP, fp32)]
    wider = f"{2 * EVAL_STREAMS} streams, warm-up {EVAL_WARMUP}, {own}"
    layouts += [(wider, 2 * EVAL_STREAMS, EVAL_WARMUP, own)]
    figures = []
    for name, streams, warmup, dtype in layouts:
        started = time.monotonic()
        result = evaluate(model.model, ids, streams=streams, warmup=warmup, dtype=dtype)
        if name.startswith("before"):
            evaluate_windows(model.model, ids, window=256, dtype=dtype)
        seconds = time.monotonic() - started
        figures.append({"layout": name, "streams": streams, "warmup": warmup, "dtype": str(dtype),
                        "loss": round(result.loss, 5), "seconds": round(seconds, 2)})  # fmt: skip
        print(f"{name:50} loss {result.loss:.5f}  {seconds:8.2f} s", flush=True)
    reference = figures[0]
    before = next(figure for figure in figures if figure["layout"].startswith("before"))
    for figure in figures:
        figure["loss_minus_first"] = round(figure["loss"] - reference["loss"], 5)
        figure["speedup_over_first"] = round(reference["seconds"] / max(figure["seconds"], 1e-9), 2)
        figure["speedup_over_before"] = round(before["seconds"] / max(figure["seconds"], 1e-9), 2)
    print(json.dumps({"run": args.run, "chars": len(ids) - 1, "threads": torch.get_num_threads(),
                      "layouts": figures}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
