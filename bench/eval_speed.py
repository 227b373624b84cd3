"""Evaluation speed: the static validation loss of a run's model read in different layouts,
each with its time, against one stream reading the whole text (the exact figure).

    python bench/eval_speed.py runs/quality --checkpoint best
    python bench/eval_speed.py runs/quality --checkpoint best --skip-sequential   # faster

Layouts: one stream (sequential); 16 streams without warm-up (evaluate before warm-ups
were added); the default (char_rnn.evaluate.EVAL_STREAMS streams, EVAL_WARMUP characters of
warm-up); more streams; and each of the last two in bf16 where the CPU has native bf16.
Prints one line per layout, then one JSON line with all the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from char_rnn import CharRNN
from char_rnn.device import resolve_precision
from char_rnn.evaluate import EVAL_STREAMS, EVAL_WARMUP, evaluate


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
    fp32 = torch.float32
    bf16 = resolve_precision("auto", torch.device(args.device))
    layouts = [("16 streams, no warm-up (before)", 16, 0, fp32)]
    if not args.skip_sequential:
        layouts.insert(0, ("sequential: one stream", 1, 0, fp32))
    layouts += [
        (f"default: {EVAL_STREAMS} streams, warm-up {EVAL_WARMUP}", EVAL_STREAMS, EVAL_WARMUP, fp32),
        (f"{2 * EVAL_STREAMS} streams, warm-up {EVAL_WARMUP}", 2 * EVAL_STREAMS, EVAL_WARMUP, fp32),
    ]
    if bf16 != fp32:
        layouts += [(f"{name}, {bf16}", s, w, bf16) for name, s, w, _ in layouts[-2:]]
    figures = []
    for name, streams, warmup, dtype in layouts:
        started = time.monotonic()
        result = evaluate(model.model, ids, streams=streams, warmup=warmup, dtype=dtype)
        seconds = time.monotonic() - started
        figures.append({"layout": name, "streams": streams, "warmup": warmup, "dtype": str(dtype),
                        "loss": round(result.loss, 5), "seconds": round(seconds, 2)})  # fmt: skip
        print(f"{name:45} loss {result.loss:.5f}  {seconds:8.2f} s", flush=True)
    reference = figures[0]
    for figure in figures:
        figure["loss_minus_first"] = round(figure["loss"] - reference["loss"], 5)
        figure["speedup_over_first"] = round(reference["seconds"] / max(figure["seconds"], 1e-9), 2)
    print(json.dumps({"run": args.run, "chars": len(ids) - 1, "threads": torch.get_num_threads(),
                      "layouts": figures}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
