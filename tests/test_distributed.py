"""Data-parallel training through a real torchrun: 2 processes on the CPU (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, run_cli

from char_rnn.data.batches import ShuffledBatches, StatefulBatches
from char_rnn.run.checkpoint import parse_trainer
from char_rnn.run.folder import RunFolder


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run"]  # the torchrun command
    command = [*launcher, "--standalone", "--nproc_per_node", str(processes), "-m", "char_rnn", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _train_lines(run: Path) -> list[dict]:
    return [m for m in RunFolder(run).read_metrics() if m["kind"] == "train"]


@pytest.mark.parametrize("make", [StatefulBatches, ShuffledBatches])
def test_ranks_split_the_single_process_global_batch(make):
    ids = np.arange(5000) % 251
    extra = {"seed": 3} if make is ShuffledBatches else {}
    whole = make(ids, batch_size=8, seq_length=16, **extra)
    ranks = [make(ids, batch_size=4, seq_length=16, rank=r, world_size=2, **extra) for r in range(2)]
    assert all(r.batches_per_epoch == whole.batches_per_epoch for r in ranks)
    for index in (0, 5, whole.batches_per_epoch - 1):
        x, y = whole.get(1, index)
        parts = [r.get(1, index) for r in ranks]
        assert (x == np.concatenate([p[0] for p in parts])).all()
        assert (y == np.concatenate([p[1] for p in parts])).all()


def test_two_processes_train_resume_with_two_and_one_and_generate(small_corpus, tmp_path):
    run = tmp_path / "run"
    common = ("--data", small_corpus, "--out", run, *TINY_FLAGS, "--checkpoint-every-steps", "20")
    first = torchrun("train", *common, "--max-steps", "70")

    # Rank 0 alone spoke and wrote: one summary, one metrics stream, no duplicate lines.
    assert first.stdout.count("stopped by max_steps") == 1
    assert first.stderr.count("training stateful") == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    steps = [m["step"] for m in _train_lines(run)]
    assert steps == list(range(10, 71, 10))
    losses = [m["loss"] for m in _train_lines(run)]
    assert losses[-1] < losses[0] - 0.5  # it learns
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.json", "model.safetensors", "best.safetensors", "metrics.jsonl", "checkpoints", "curves.png"]
    )
    saved = parse_trainer(RunFolder(run).latest_checkpoint() / "trainer.safetensors")
    assert saved.hidden[0].shape == (1, 16, 48)  # both ranks' streams, gathered

    # Resume with the same 2 processes: an exact continuation (same global batch) ...
    torchrun("train", "--resume", "--out", run, "--max-steps", "110")
    assert [m["step"] for m in _train_lines(run)][-4:] == [80, 90, 100, 110]
    whole = tmp_path / "whole"
    torchrun("train", *(str(a).replace(str(run), str(whole)) for a in common), "--max-steps", "110")
    assert (whole / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()

    # ... then with one plain process: a new stream layout, resumed from a fresh state.
    single = run_cli("train", "--resume", "--out", run, "--max-steps", "130", env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    assert "global batch changed from 16 to 8" in single.stderr
    assert [m["step"] for m in _train_lines(run)][-2:] == [120, 130]
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 130

    generated = run_cli("generate", run, "--start", "ROMEO:", "--length", "40", "--seed", "1")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("ROMEO:") and len(generated.stdout) == len("ROMEO:") + 40 + 1
