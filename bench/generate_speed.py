"""Generation speed of char-rnn against the TensorFlow tutorial peer, interleaved.

Each round runs, one after the other in fresh processes: the peer (TensorFlow's default
threads), our fast engine with one thread ("fast 1t") and with one per core ("fast 2t" on
two cores), and our reference engine with one per core (unless --no-reference); first for
one stream, then for 64 streams. The
machine is shared and noisy, so the figures are medians over rounds and the ratios are
taken between runs of the same round.

    .venv/bin/python bench/generate_speed.py --rounds 3
    .venv/bin/python bench/generate_speed.py --quality runs/tutorial   # int8 vs fp32 loss

The peer lives outside the project (../shared/peers, run by .tfpeer/bin/python, a
virtualenv with tensorflow-cpu); it is never a dependency.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# (label, streams, characters per stream for us, steps for the peer)
CORES = os.cpu_count() or 1
SHAPES = (("1 stream", 1, 1000, 1000), ("64 streams", 64, 200, 200))


def chars_per_s(command: list[str]) -> float:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    found = re.search(r"([\d,.]+) chars/s|chars_per_s ([\d.]+)", done.stdout)
    if not found:
        sys.exit(f"no figure in the output of {' '.join(command)}:\n{done.stdout}")
    return float((found.group(1) or found.group(2)).replace(",", ""))


def ours(engine: str, streams: int, length: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "char_rnn", "bench", "generate", "--engine", engine, "--batch-size",
            str(streams), "--length", str(length), "--threads", str(threads)]  # fmt: skip


def peer(python: str, corpus: str, streams: int, steps: int) -> list[str]:
    script = str(SHARED / "peers" / "tf_tutorial_peer.py")
    return [python, script, corpus, "gen", "--batch", str(streams), "--steps", str(steps)]


def speed(args: argparse.Namespace) -> None:
    runs: dict[tuple[str, str], list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        for label, streams, length, steps in SHAPES:
            commands = {"tf peer": peer(args.peer_python, args.corpus, streams, steps),
                        "fast 1t": ours("fast", streams, length, 1),
                        f"fast {CORES}t": ours("fast", streams, length, CORES)}  # fmt: skip
            if not args.no_reference:
                commands[f"ref {CORES}t"] = ours("reference", streams, max(length // 4, 50), CORES)
            for name, command in commands.items():
                figure = chars_per_s(command)
                runs.setdefault((label, name), []).append(figure)
                print(f"round {round_}  {label:10}  {name:9}  {figure:10,.0f} chars/s", flush=True)
    print(f"\nmedians over {args.rounds} interleaved rounds (Embedding 256 -> GRU 1024 -> Dense 65):")
    for label, *_ in SHAPES:
        peer_runs = runs[(label, "tf peer")]
        for name in ("tf peer", "fast 1t", f"fast {CORES}t", f"ref {CORES}t"):
            if (label, name) not in runs:
                continue
            figures = runs[(label, name)]
            ratios = [ours_ / theirs for ours_, theirs in zip(figures, peer_runs, strict=True)]
            print(f"  {label:10}  {name:9}  {statistics.median(figures):10,.0f} chars/s   "
                  f"x{statistics.median(ratios):.2f} the peer (per-round ratios "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


def quality(run: str) -> None:
    """Loss on the run's validation text: the reference model, the fast engine's fp32 and int8 steps."""
    from char_rnn import CharRNN
    from char_rnn.data.corpus import load_corpus
    from char_rnn.evaluate import evaluate, evaluate_steps
    from char_rnn.generate.fast import FastGenerator

    model = CharRNN.load(run)
    train = model.run_config.get("train", {})
    source = model.run_config.get("corpus", {}).get("source") or train.get("data", "shakespeare")
    corpus = load_corpus(source, train.get("encoding", "utf-8"), vocab=model.vocab)
    _, ids = corpus.split(float(train.get("val_fraction", 0.1)))
    reference = evaluate(model.model, ids).loss
    print(f"{run}: {model.config}, validation text {len(ids):,} characters")
    print(f"  reference model.forward fp32  loss {reference:.5f}")
    for weights in ("fp32", "int8"):
        loss = evaluate_steps(FastGenerator(model.model, weights).step, ids).loss
        print(f"  fast engine {weights:4}              loss {loss:.5f}  "
              f"({(loss - reference) / reference:+.3%} of the reference)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-python", default=str(REPO / ".tfpeer" / "bin" / "python"))
    parser.add_argument("--corpus", default=str(SHARED / "data" / "shakespeare.txt"))
    parser.add_argument("--no-reference", action="store_true", help="skip our reference engine")
    parser.add_argument("--quality", metavar="RUN", help="report int8 vs fp32 loss of a run instead")
    args = parser.parse_args()
    if args.quality:
        quality(args.quality)
    else:
        speed(args)


if __name__ == "__main__":
    main()
