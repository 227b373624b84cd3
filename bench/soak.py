"""Soak: train, kill -9 at random moments, resume, generate, in a loop, for --minutes.

    nice -n 15 .venv/bin/python bench/soak.py --minutes 30

Each trial trains a small model on a slice of tiny Shakespeare with frequent checkpoints,
kills it with SIGKILL at random moments, resumes until it finishes, then generates from it.
It checks that nothing is lost (after every kill the newest committed checkpoint loads, and
its step never goes backwards) and prints the figures: trials, kills, resumes, and the
peak resident memory of the training processes over time (which should stay flat).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from char_rnn.data.corpus import shakespeare_path
from char_rnn.run.checkpoint import parse_trainer
from char_rnn.run.folder import RunFolder
from char_rnn.run.storage import read_tensors

FLAGS = ("--embedding-dim", "32", "--units", "128", "--batch-size", "16", "--seq-length", "64",
         "--epochs", "2", "--checkpoint-every-steps", "5", "--eval-every-steps", "25",
         "--log-every", "25", "--precision", "fp32", "--quiet")  # fmt: skip


def rss_kib(pid: int) -> int:
    """Resident memory of a live process, from /proc (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def newest_step(out: Path) -> int:
    run = RunFolder(out)
    if not run.has_committed_checkpoint():
        return 0
    newest = run.latest_checkpoint()  # raises if a committed checkpoint was lost
    read_tensors(newest / "model.safetensors")
    return parse_trainer(newest / "trainer.safetensors").counters["step"]


def newest_folder(out: Path) -> str:
    return max((p.name for p in (out / "checkpoints").glob("step-*")), default="")


def run_trial(corpus: Path, out: Path, rng: random.Random, figures: dict) -> None:
    """Train to the end through 1-5 kills. A kill waits for the process to begin a new
    checkpoint folder and then a random 0-2 s more, so every run makes some progress however
    loaded the machine is, and the kill lands in a step, a checkpoint write or a prune."""
    last_step = 0
    kills = rng.randint(1, 5)
    for attempt in range(kills + 1):
        resume = ["--resume"] if (out / "config.json").exists() else []
        command = [sys.executable, "-m", "char_rnn", "train", "--data", str(corpus), "--out", str(out),
                   *FLAGS, *resume]  # fmt: skip
        figures["resumes" if resume else "starts"] += 1
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen, kill_at, peak = newest_folder(out), None, 0
        while process.poll() is None and (kill_at is None or time.monotonic() < kill_at):
            peak = max(peak, rss_kib(process.pid))
            if attempt < kills and kill_at is None and newest_folder(out) > seen:
                kill_at = time.monotonic() + rng.uniform(0.0, 2.0)
            time.sleep(0.01)
        figures["rss_peaks_kib"].append((round(time.monotonic() - figures["started"]), peak))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            figures["kills"] += 1
            step = newest_step(out)
            assert step >= last_step, f"step went back from {last_step} to {step} in {out}"
            last_step = step
            continue
        stderr = process.stderr.read().decode()
        assert process.returncode == 0, stderr
        break
    final = newest_step(out)
    assert final >= last_step and (out / "model.safetensors").is_file()
    generated = subprocess.run([sys.executable, "-m", "char_rnn", "generate", str(out), "--length", "200",
                                "--seed", "1"], capture_output=True, text=True)  # fmt: skip
    assert generated.returncode == 0 and len(generated.stdout) > 200, generated.stderr
    figures["generated"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to soak (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    figures = {"started": time.monotonic(), "trials": 0, "kills": 0, "resumes": 0, "starts": 0,
               "generated": 0, "rss_peaks_kib": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="char-rnn-soak-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(shakespeare_path().read_text(encoding="utf-8")[:30_000], encoding="utf-8")
        deadline = figures["started"] + args.minutes * 60
        while time.monotonic() < deadline:
            out = Path(tmp) / f"run-{figures['trials']}"
            run_trial(corpus, out, rng, figures)
            figures["trials"] += 1
            print(f"trial {figures['trials']}: kills {figures['kills']}, resumes {figures['resumes']}, "
                  f"{(time.monotonic() - figures['started']) / 60:.1f} min", flush=True)  # fmt: skip
            shutil.rmtree(out)
    peaks = figures["rss_peaks_kib"]
    tenth = max(len(peaks) // 10, 1)
    first, last = peaks[:tenth], peaks[-tenth:]
    print(f"soaked {(time.monotonic() - figures['started']) / 60:.1f} min: {figures['trials']} trials, "
          f"{figures['kills']} kills, {figures['resumes']} resumes, {figures['generated']} generations; "
          "nothing lost")  # fmt: skip
    print(f"peak RSS of the training processes: max {max(p for _, p in peaks) / 1024:.0f} MiB; "
          f"first tenth {max(p for _, p in first) / 1024:.0f} MiB, last tenth "
          f"{max(p for _, p in last) / 1024:.0f} MiB")  # fmt: skip
    for t, peak in peaks[:: max(len(peaks) // 12, 1)]:
        print(f"  t={t:5d} s  peak RSS {peak / 1024:6.0f} MiB")


if __name__ == "__main__":
    main()
