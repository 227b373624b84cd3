"""Novelty index benchmark: building and querying the suffix array of a large corpus.

    python bench/novelty_index.py --gib 1

Writes a corpus of --gib GiB (Shakespeare's lines in a seeded random order, again and
again), makes a run on it (one training step of a tiny model: the index depends only on
the run's training text), then builds RUN/novelty/ in a child process and reports its
wall time and peak RSS, the index's size on disk, and the time of a longest-span query
for 200-character samples. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from char_rnn.data.corpus import shakespeare_path

BUILD = """
import resource, sys, time
from char_rnn.novelty import CopyIndex
started = time.monotonic()
index = CopyIndex.for_run(sys.argv[1])
print(time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

QUERY = """
import json, random, sys, time
from char_rnn.novelty import CopyIndex
index = CopyIndex.for_run(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
rng = random.Random(0)
samples = [text[i : i + 100] + "".join(rng.choice("abcdefgh ") for _ in range(100))
           for i in (rng.randrange(len(text) - 100) for _ in range(10))]
started = time.monotonic()
spans = [len(index.longest_copy(s)) for s in samples]
print(json.dumps({"seconds_per_sample": (time.monotonic() - started) / len(samples), "spans": spans}))
"""


def make_corpus(path: Path, size: int) -> None:
    lines = shakespeare_path().read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(0)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            rng.shuffle(lines)
            block = "".join(lines)[: size - written]
            out.write(block)
            written += len(block)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--out", default=f"runs/novelty-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    make_corpus(corpus, int(args.gib * 2**30))
    run = out / "run"
    flags = ["--units", "16", "--embedding-dim", "8", "--layers", "1", "--max-steps", "1", "--quiet",
             "--val-max-chars", "10000", "--batch-size", "4", "--seq-length", "16"]  # fmt: skip
    started = time.monotonic()
    train = [sys.executable, "-m", "char_rnn", "train", "--data", str(corpus), "--out", str(run), *flags]
    subprocess.run(train, check=True)
    encode_seconds = time.monotonic() - started
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(run)], check=True, capture_output=True, text=True
    )
    build_seconds, peak = map(float, built.stdout.split())
    queried = subprocess.run([sys.executable, "-c", QUERY, str(run), str(shakespeare_path())],
                             check=True, capture_output=True, text=True)  # fmt: skip
    index_bytes = sum(f.stat().st_size for f in (run / "novelty").iterdir())
    print(json.dumps({
        "corpus_bytes": corpus.stat().st_size,
        "encode_and_run_seconds": round(encode_seconds, 1),
        "index_build_seconds": round(build_seconds, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
        "index_gib": round(index_bytes / 2**30, 2),
        **json.loads(queried.stdout),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
