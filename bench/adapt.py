"""Dynamic evaluation benchmark: the static and the adapted loss of a run's model on the
part of its validation text that tuning did not see, and the time adapting takes.

    python bench/adapt.py runs/quality --checkpoint best            # the configured values
    python bench/adapt.py runs/quality --checkpoint best --tune     # tune them first

The validation part (the last 10 % of the corpus) is cut in two: its first --tune-chars
characters are where --tune chooses the learning rate, then the decay, then the segment
length, one after the other, each by the adapted loss there; the figures are measured on
the rest, which no choice has seen. The gradient statistics always come from the end of
the training part (char_rnn/adapt.py). Prints one JSON line per tuning trial on stderr and
one JSON line with the figures on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from char_rnn import AdaptConfig, CharRNN
from char_rnn.evaluate import evaluate

LRS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005)
DECAYS = (0.0, 0.003, 0.01, 0.03, 0.1)
SEGMENTS = (25, 50, 100)


def tune(model: CharRNN, ids, config: AdaptConfig) -> AdaptConfig:
    """One field at a time, each over its grid with the others as chosen so far."""
    for name, grid in (("adapt_lr", LRS), ("adapt_decay", DECAYS), ("adapt_segment", SEGMENTS)):
        trials = {}
        for value in grid:
            trial = dataclasses.replace(config, **{name: value})
            started = time.monotonic()
            result = model.adaptation(trial).evaluate(model.model, ids)
            trials[value] = result.loss
            print(json.dumps({"tune": dataclasses.asdict(trial), "loss": round(result.loss, 4),
                              "static_loss": round(result.static.loss, 4),
                              "seconds": round(time.monotonic() - started, 1)}),
                  file=sys.stderr, flush=True)  # fmt: skip
        config = dataclasses.replace(config, **{name: min(trials, key=trials.get)})
    return config


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="best")
    parser.add_argument("--tune", action="store_true", help="choose lr, decay and segment first")
    parser.add_argument("--tune-chars", type=int, default=20_000,
                        help="the validation text's first part, for tuning (default 20,000)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: one stream)")
    parser.add_argument("--device", default="cpu")
    for field in dataclasses.fields(AdaptConfig):
        parser.add_argument(
            "--" + field.name.replace("_", "-"), type=type(field.default), default=field.default
        )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = CharRNN.load(args.run, which=args.checkpoint, device=args.device, threads=args.threads)
    config = AdaptConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AdaptConfig)})
    val = model.run_text("val")
    if len(val) <= args.tune_chars + 1:
        parser.error(f"the validation part has {len(val):,} characters, not more than --tune-chars")
    tuning, held_out = val[: args.tune_chars + 1], val[args.tune_chars :]
    if args.tune:
        config = tune(model, tuning, config)
    started = time.monotonic()
    adaptation = model.adaptation(config)
    stats_seconds = time.monotonic() - started
    started = time.monotonic()
    result = adaptation.evaluate(model.model, held_out)
    adapt_seconds = time.monotonic() - started
    started = time.monotonic()
    parallel = evaluate(model.model, held_out)  # evaluate's usual 16 streams, no adaptation
    static_seconds = time.monotonic() - started
    report = {
        "run": args.run,
        "checkpoint": args.checkpoint,
        "tuned": args.tune,
        "adapt": dataclasses.asdict(config),
        "held_out_chars": result.chars,
        "tuning_chars": args.tune_chars,
        "static_loss": round(result.static.loss, 4),
        "adapted_loss": round(result.loss, 4),
        "adapted_lower": f"{result.gain:.1%}",
        "static_loss_16_streams": round(parallel.loss, 4),
        "stats_seconds": round(stats_seconds, 1),
        "adapted_seconds": round(adapt_seconds, 1),
        "static_16_streams_seconds": round(static_seconds, 1),
        "threads": args.threads,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
