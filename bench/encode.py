"""Encoding speed and training memory on a corpus of about 1 GiB.

    python bench/encode.py [--size-mib 1024] [--keep]

Builds the corpus in a temporary folder from tiny Shakespeare, repeated with
variations (every copy numbered, some lines upper-cased, typographic quotes and dashes
in every tenth copy, so that the non-ASCII decoding path runs too), then:

1. encodes it in a child process: MB/s of text, and that process's peak RSS;
2. trains a few steps on it in another child process (the encoding now cached) and
   reports that process's peak RSS, which must stay under 1.5 GiB.

The corpus and its cache are deleted afterwards unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENCODE = """
import json, sys, time, resource
from char_rnn.data.corpus import load_corpus
started = time.perf_counter()
corpus = load_corpus(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "chars": len(corpus),
                  "vocab": len(corpus.vocab), "dtype": corpus.ids.dtype.name,
                  "cpu_seconds": time.process_time(),
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
# The CLI itself, reporting its peak resident memory when it is done.
TRAIN = """
import json, resource, sys
from char_rnn.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
sys.exit(status)
"""


def build_corpus(path: Path, size: int, seed_text: str) -> None:
    lines = seed_text.splitlines(keepends=True)
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            fancy = copy % 10 == 9
            parts = [f"\n== copy {copy} ==\n"]
            for i, line in enumerate(lines):
                if (i + copy) % 7 == 0:
                    line = line.upper()
                if fancy:
                    line = line.replace("'", "\u2019").replace("--", "\u2014")
                parts.append(line)
            chunk = "".join(parts)
            out.write(chunk)
            written += len(chunk.encode("utf-8"))
            copy += 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    from char_rnn.data.corpus import shakespeare_path

    seed_text = shakespeare_path().read_text(encoding="utf-8")
    work = Path(tempfile.mkdtemp(prefix="char-rnn-bench-"))
    env = {**os.environ, "CHAR_RNN_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    try:
        corpus = work / "big.txt"
        build_corpus(corpus, args.size_mib << 20, seed_text)
        size = corpus.stat().st_size
        print(f"corpus: {size / 2**20:,.0f} MiB in {corpus}")

        done = subprocess.run([sys.executable, "-c", ENCODE, str(corpus)], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        figures = json.loads(done.stdout)
        print(f"encode: {figures['chars']:,} characters, {figures['vocab']} distinct ({figures['dtype']}) "
              f"in {figures['seconds']:.1f} s = {size / figures['seconds'] / 1e6:.0f} MB/s; "
              f"peak RSS {figures['peak_rss_kib'] / 2**20:.2f} GiB")  # fmt: skip
        # On a shared machine the wall clock counts other processes' time too.
        print(f"encode: {size / figures['cpu_seconds'] / 1e6:.0f} MB/s of CPU time "
              f"({figures['cpu_seconds']:.1f} s, imports included)")  # fmt: skip
        cached = sum(p.stat().st_size for p in (work / "cache").iterdir())
        print(f"cache: {cached / 2**20:,.0f} MiB")

        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", TRAIN, "train", "--data", str(corpus), "--out", str(work / "run"),
             "--max-steps", str(args.steps), "--val-fraction", "0.0001", "--quiet"],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        peak = json.loads(done.stdout.splitlines()[-1])["peak_rss_kib"]
        print(f"train: {args.steps} steps of the default model in {time.perf_counter() - started:.1f} s "
              f"(cached encoding); peak RSS {peak / 2**20:.2f} GiB")  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
