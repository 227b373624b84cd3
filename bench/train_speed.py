"""Training speed: char-rnn against the TensorFlow tutorial peer, interleaved, in one run.

Each round times the peer (a subprocess in its own virtualenv), then our fused path, then
PyTorch's own nn.GRU under the same precision, so that every round sees the same machine
load; the medians over rounds and their ratio are printed. LSTM 1024 and 2x512 LSTM follow
(fused against nn.LSTM). The peer is never a dependency of the project.

    .venv/bin/python bench/train_speed.py                      # 3 rounds, the tutorial preset
    .venv/bin/python bench/train_speed.py --rounds 5 --no-lstm
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from char_rnn.config import ModelConfig, build_configs, with_vocab
from char_rnn.device import resolve_precision
from char_rnn.train.speed import measure_training

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peers" / "tf_tutorial_peer.py"
CORPUS = Path(os.environ.get("CHAR_RNN_DATA", REPO.parent / "shared" / "data")) / "shakespeare.txt"


def peer_chars_per_s(python: Path, steps: int) -> float:
    done = subprocess.run(
        [str(python), str(PEER), str(CORPUS), "train", "--steps", str(steps)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("chars_per_s"))
    return float(line.split()[1])


def ours(model: ModelConfig, dtype: torch.dtype, steps: int, fused: bool):
    return measure_training(model, dtype=dtype, steps=steps, warmup=1, fused=fused)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps of ours per measurement")
    parser.add_argument("--peer-steps", type=int, default=6, help="timed steps of the peer")
    parser.add_argument("--peer-python", type=Path, default=REPO / ".tfpeer" / "bin" / "python")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-lstm", action="store_true", help="only the tutorial GRU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    has_peer = args.peer_python.exists() and PEER.exists() and CORPUS.exists()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at start, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {str(dtype).replace('torch.', '')}")  # fmt: skip
    if not has_peer:
        print(f"(no TF peer: {args.peer_python} or {PEER} missing; timing ours only)")

    tutorial = with_vocab(build_configs("tutorial")[0], 65)
    figures: dict[str, list[float]] = {"tf": [], "fused": [], "torch": []}
    peak = []
    for round_ in range(1, args.rounds + 1):
        if has_peer:
            figures["tf"].append(peer_chars_per_s(args.peer_python, args.peer_steps))
        fused = ours(tutorial, dtype, args.steps, fused=True)
        figures["fused"].append(fused.chars_per_s)
        peak.append(fused.peak_fraction)
        figures["torch"].append(ours(tutorial, dtype, args.steps, fused=False).chars_per_s)
        print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in figures.items() if v)
              + f" chars/s; fused at {fused.peak_fraction:.0%} of the GEMM peak "
              f"({fused.gflops:.0f} of {fused.peak_gflops:.0f} GFLOP/s)", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in figures.items() if v}
    print(f"\ntutorial GRU 1024, batch 64 x 100, medians of {args.rounds} interleaved rounds:")
    for name, label in (("tf", "TensorFlow peer"), ("fused", "char-rnn fused"), ("torch", "nn.GRU")):
        if name in med:
            ratio = f" ({med[name] / med['tf']:.2f}x TF)" if "tf" in med else ""
            print(f"  {label:16s} {med[name]:>9,.0f} chars/s{ratio}")
    print(f"  fused: {statistics.median(peak):.0%} of the GEMM peak for {str(dtype).replace('torch.', '')}")

    if not args.no_lstm:
        for name, config in (
            ("LSTM 1024", replace(tutorial, cell="lstm")),
            ("2x512 LSTM", replace(tutorial, cell="lstm", layers=2, units=512)),
        ):
            rows = {"fused": [], "torch": []}
            for _ in range(args.rounds):
                for kind in rows:
                    rows[kind].append(ours(config, dtype, args.steps, fused=kind == "fused"))
            f = statistics.median(s.chars_per_s for s in rows["fused"])
            t = statistics.median(s.chars_per_s for s in rows["torch"])
            frac = statistics.median(s.peak_fraction for s in rows["fused"])
            print(f"{name}: fused {f:,.0f} chars/s ({frac:.0%} of peak), nn.LSTM {t:,.0f} chars/s "
                  f"({f / t:.2f}x)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
