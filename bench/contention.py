"""Speed on a busy machine: chars/s idle, beside one and two single-core busy processes, with
the fixed thread rule and with the measured choice (threads.py), all in one run.

Workloads: the defaults' training (2 x LSTM 768), the tutorial's training (GRU 1024), and
generation with the tutorial-size model of 1 and of 64 streams. "fixed" is the rule char-rnn
followed before it measured: training and many streams on every core, one stream on one
thread. Each load (idle, 1 busy, 2 busy) runs every workload with both rules back to back,
so both see the same machine; each figure is the median of --rounds measurements, and every
busy figure is also given as a share of the same rule's idle one.

    .venv/bin/python bench/contention.py                 # on a quiet machine: a few minutes
    .venv/bin/python bench/contention.py --quick         # a smoke run with tiny figures
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from char_rnn.busy import busy_cores
from char_rnn.config import PRESETS, build_configs, with_vocab
from char_rnn.data.vocab import Vocab
from char_rnn.device import resolve_precision
from char_rnn.generate import open_engine
from char_rnn.generate.speed import measure_generation, tutorial_model
from char_rnn.threads import available_cores

LOADS = (0, 1, 2)  # busy processes beside the measurement
RULES = ("fixed", "measured")


def training(preset: str | None, steps: int, tiny: bool) -> Callable[[int | None], float]:
    from char_rnn.train.speed import measure_training

    model, train = build_configs(preset)
    model = with_vocab(model, 65)
    batch, length = train.batch_size, train.seq_length
    if tiny:
        model, batch, length = replace(model, units=64, embedding_dim=16), 8, 16
    dtype = resolve_precision(train.precision, torch.device("cpu"))

    def measure(threads: int | None) -> float:
        return measure_training(
            model, batch_size=batch, seq_length=length, dtype=dtype, steps=steps, warmup=1, threads=threads
        ).chars_per_s

    return measure


def generation(streams: int, length: int) -> Callable[[int | None], float]:
    vocab = Vocab(chr(c) for c in range(32, 97))
    model = tutorial_model(vocab)

    def measure(threads: int | None) -> float:
        engine = open_engine("fast", model, vocab, threads=threads)
        return measure_generation(engine, vocab, batch_size=streams, length=length).chars_per_s

    return measure


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per measurement")
    parser.add_argument("--length", type=int, default=3000, help="characters per stream for generation")
    parser.add_argument("--quick", action="store_true", help="tiny models and lengths: checks it runs")
    args = parser.parse_args()
    cores = available_cores()
    rounds, steps, length = (1, 2, 200) if args.quick else (args.rounds, args.steps, args.length)
    defaults, _ = build_configs(None)
    tutorial = f"train, tutorial (GRU {PRESETS['tutorial']['units']})"
    workloads: dict[str, tuple[Callable[[int | None], float], int]] = {
        f"train, defaults ({defaults.layers}x {defaults.cell.upper()} {defaults.units})": (
            training(None, steps, args.quick),
            cores,
        ),
        tutorial: (training("tutorial", steps, args.quick), cores),
        "generate, 1 stream": (generation(1, length), 1),
        "generate, 64 streams": (generation(64, length), cores),
    }
    if args.quick:
        del workloads[tutorial]
    figures: dict[tuple[str, int, str], float] = {}
    for busy in LOADS:
        with busy_cores(busy):
            for name, (measure, fixed_threads) in workloads.items():
                for rule in RULES:
                    threads = fixed_threads if rule == "fixed" else None
                    figures[name, busy, rule] = statistics.median(measure(threads) for _ in range(rounds))
                    print(
                        f"  {name}, {busy} busy, {rule}: {figures[name, busy, rule]:,.0f} chars/s", flush=True
                    )
    print(f"\nchars/s on {cores} cores, median of {rounds}; in brackets, the share of the same rule idle")
    header = f"{'workload':32} {'rule':9}" + "".join(f"{f'{b} busy':>20}" for b in LOADS)
    print(header)
    print("-" * len(header))
    for name in workloads:
        for rule in RULES:
            idle = figures[name, 0, rule]
            cells = [f"{figures[name, 0, rule]:>20,.0f}"]
            cells += [
                f"{figures[name, b, rule]:>13,.0f} ({figures[name, b, rule] / idle:4.0%})" for b in LOADS[1:]
            ]
            print(f"{name:32} {rule:9}" + "".join(cells))
    for name in workloads:
        ratio = figures[name, 0, "measured"] / figures[name, 0, "fixed"]
        print(f"idle, measured / fixed, {name}: {ratio:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
