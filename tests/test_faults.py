"""Crashes and signals against real training processes.

Training runs as `python -m char_rnn train` subprocesses that are killed with SIGKILL at
random moments (many of them inside a checkpoint write, since one is written every two
steps), then resumed until they finish. The result must be byte-identical to a run that
was never interrupted. CHAR_RNN_FAULT_TRIALS sets the number of trials of the default test;
the `slow` test runs many.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS, TINY_MODEL, run_cli, tiny_train_config

from char_rnn.errors import CharRNNError
from char_rnn.run.checkpoint import parse_trainer
from char_rnn.run.folder import RunFolder
from char_rnn.run.storage import read_tensors
from char_rnn.train.loop import train
from char_rnn.train.state import TrainingState

# Two epochs of about 28 steps each, a checkpoint every two steps, validation every 10:
# every kind of write (checkpoint, model.safetensors, best.safetensors, pruning) is frequent.
FLAGS = (*TINY_FLAGS, "--epochs", "2", "--checkpoint-every-steps", "2", "--eval-every-steps", "10",
         "--keep-last", "2", "--dropout", "0.0", "--quiet")  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(shakespeare_text[:8_000], encoding="utf-8")
    return path


def _train_command(corpus: Path, out: Path, *extra: str) -> list[str]:
    """The one command a preemptible machine runs again and again until it succeeds."""
    return [sys.executable, "-m", "char_rnn", "train", "--data", str(corpus), "--out", str(out), *FLAGS,
            "--resume", *extra]  # fmt: skip


def _assert_newest_checkpoint_loads(out: Path) -> int:
    """What a crash must never break: once a checkpoint was committed, the newest complete
    one is there and loads. Returns its step (0 when none was committed yet)."""
    run = RunFolder(out)
    if not run.has_committed_checkpoint():
        return 0
    newest = run.latest_checkpoint()
    read_tensors(newest / "model.safetensors")
    return parse_trainer(newest / "trainer.safetensors").counters["step"]


def _newest_step_folder(out: Path) -> str:
    """The newest checkpoint folder, committed or still being written."""
    return max((p.name for p in (out / "checkpoints").glob("step-*")), default="")


def _run_with_kills(corpus: Path, out: Path, rng: random.Random, kills: int) -> list[str]:
    """Run to completion, killed `kills` times. A kill waits until the process has begun a
    new checkpoint folder (so each run makes progress even on a loaded machine), then a
    random 0-250 ms more: it lands inside a checkpoint write, a prune or a step. On odd
    seeds the first kill comes at a blind moment, often before any checkpoint exists.
    Returns what each process wrote to stderr, for the message of a failure."""
    last_step, stderrs = 0, []
    for attempt in range(kills + 1):
        process = subprocess.Popen(_train_command(corpus, out), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        if attempt == kills:
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr
            return [*stderrs, stderr]
        if attempt == 0 and rng.random() < 0.5:
            time.sleep(rng.uniform(0.0, 2.0))
        else:
            seen = _newest_step_folder(out)
            deadline = time.monotonic() + 300
            while _newest_step_folder(out) <= seen and process.poll() is None:
                assert time.monotonic() < deadline, "training made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
        if process.poll() is not None:  # it finished before the kill: start over the count
            _, stderr = process.communicate()
            assert process.returncode == 0, stderr
            return [*stderrs, stderr]
        process.send_signal(signal.SIGKILL)
        stderrs.append(process.communicate()[1])
        step = _assert_newest_checkpoint_loads(out)
        assert step >= last_step, "a crash lost a committed checkpoint"
        last_step = step


def _assert_same_run(out: Path, reference: Path, stderrs: list[str] = ()) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        same = (out / name).read_bytes() == (reference / name).read_bytes()
        assert same, (name, *stderrs, "reference:", (reference.parent / "stderr.txt").read_text())
    names = [p.name for p in RunFolder(out).complete_checkpoints()]
    assert names == [p.name for p in RunFolder(reference).complete_checkpoints()]
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".pruned-*"))
    assert (out / "curves.png").is_file()


def _trial(tmp_path: Path, corpus: Path, reference: Path, seed: int, kills: int) -> None:
    out = tmp_path / f"killed-{seed}"
    stderrs = _run_with_kills(corpus, out, random.Random(seed), kills)
    _assert_same_run(out, reference, stderrs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Path:
    """One run never interrupted, which every killed run must end equal to."""
    out = tmp_path_factory.mktemp("reference") / "uninterrupted"
    result = subprocess.run(_train_command(corpus, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (out.parent / "stderr.txt").write_text(result.stderr)  # for the message of a failure
    return out


def test_killed_and_resumed_training_ends_bit_identical(tmp_path, corpus, reference):
    for seed in range(int(os.environ.get("CHAR_RNN_FAULT_TRIALS", "2"))):
        _trial(tmp_path, corpus, reference, seed, kills=3)


def _kill_when(command: list[str], ready) -> bool:
    """Start `command` and SIGKILL it as soon as `ready()` holds; False if it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready() and process.poll() is None:
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.001)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return killed


def _finish(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow  # about 12-35 s on 2 cores: `pytest -m slow` runs it
def test_killed_before_config_json_exists_the_same_command_starts_over(tmp_path, corpus, reference):
    # The folder does not exist yet, or exists with nothing in it (a kill right after it
    # was made), or a kill comes as soon as it appears: each time the same command works.
    _finish(_train_command(corpus, tmp_path / "never-started"))
    _assert_same_run(tmp_path / "never-started", reference)
    (tmp_path / "empty").mkdir()
    _finish(_train_command(corpus, tmp_path / "empty"))
    _assert_same_run(tmp_path / "empty", reference)
    out = tmp_path / "killed-at-once"
    _kill_when(_train_command(corpus, out), out.exists)
    _finish(_train_command(corpus, out))
    _assert_same_run(out, reference)


@pytest.mark.slow  # about 12-35 s on 2 cores: `pytest -m slow` runs it
def test_killed_after_the_final_checkpoint_the_same_command_changes_nothing(tmp_path, corpus, reference):
    final = max(RunFolder(reference).complete_checkpoints()).name
    out = tmp_path / "killed-at-the-end"
    _kill_when(_train_command(corpus, out), lambda: (out / "checkpoints" / final / "manifest.json").exists())
    done = _finish(_train_command(corpus, out))
    assert "is complete" in done.stdout
    _assert_same_run(out, reference)
    # A finished run, resumed again: it says so, and no file changes.
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    again = _finish(_train_command(corpus, out))
    assert (
        f"step {parse_trainer(out / 'checkpoints' / final / 'trainer.safetensors').counters['step']}"
        in again.stdout
    )
    assert "is complete" in again.stdout and "nothing to do" in again.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow  # about 12-35 s on 2 cores: `pytest -m slow` runs it
def test_a_time_limited_run_killed_and_resumed_never_raises_its_learning_rate(tmp_path, corpus):
    out = tmp_path / "timed"
    command = [sys.executable, "-m", "char_rnn", "train", "--data", str(corpus), "--out", str(out),
               *TINY_FLAGS, "--epochs", "1000", "--max-time", "6", "--lr-schedule", "cosine",
               "--warmup-steps", "5", "--log-every", "1", "--checkpoint-every-steps", "5", "--quiet",
               "--resume"]  # fmt: skip
    checkpoints = out / "checkpoints"
    assert _kill_when(command, lambda: len(list(checkpoints.glob("step-*/manifest.json"))) >= 2)
    _finish(command)
    records = [m for m in RunFolder(out).read_metrics() if m["kind"] == "train"]
    rates = [m["lr"] for m in records if m["step"] > 5]
    assert len(rates) > 10
    assert all(b <= a for a, b in zip(rates, rates[1:], strict=False)), "the learning rate rose"
    assert rates[-1] < 0.5 * rates[0]  # the cosine went on decaying after the resume
    stop = [m for m in RunFolder(out).read_metrics() if m["kind"] == "stop"][-1]
    assert stop["reason"] == "max_time" and stop["time"] < 6 + 5  # the budget counts across the resume


@pytest.mark.slow
def test_many_kill_trials(tmp_path, corpus, reference):
    for seed in range(100, 120):
        _trial(tmp_path, corpus, reference, seed, kills=10)


# ---- SIGINT / SIGTERM ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "status"), [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)]
)
def test_a_signal_saves_a_checkpoint_and_the_run_resumes(tmp_path, corpus, sig, status):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "char_rnn", "train", "--data", str(corpus), "--out", str(out),
               *TINY_FLAGS, "--epochs", "1000", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and metrics.stat().st_size):  # training has started stepping
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    stopped = [m for m in RunFolder(out).read_metrics() if m["kind"] == "stop"]
    assert stopped[-1]["reason"] == sig.name
    step = stopped[-1]["step"]
    assert RunFolder(out).latest_checkpoint().name == f"step-{step:09d}"
    assert f"step {step}, stopped by {sig.name}" in stdout

    resumed = run_cli("train", "--out", out, "--resume", "--max-steps", step + 3)
    assert resumed.returncode == 0, resumed.stderr
    assert RunFolder(out).latest_checkpoint().name == f"step-{step + 3:09d}"


# ---- keep-last, non-finite steps --------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 4])
def test_keep_last_prunes_to_n_and_keeps_the_newest(small_corpus, tmp_path, keep):
    config = tiny_train_config(small_corpus, tmp_path / "run", max_steps=30, checkpoint_every_steps=5,
                               keep_last=keep)  # fmt: skip
    train(TINY_MODEL, config)
    names = [p.name for p in RunFolder(tmp_path / "run").complete_checkpoints()]
    assert names == [f"step-{s:09d}" for s in range(30, 30 - 5 * keep, -5)]
    assert not list((tmp_path / "run" / "checkpoints").glob(".pruned-*"))


def test_a_resume_finishes_the_prune_a_crash_interrupted(small_corpus, tmp_path):
    # A kill between the final checkpoint's commit and its prune leaves one too many; the
    # resumed run has no step left to save, so the restore itself must prune.
    run = tmp_path / "run"
    train(TINY_MODEL, tiny_train_config(small_corpus, run, checkpoint_every_steps=2, keep_last=3))
    three = [p.name for p in RunFolder(run).complete_checkpoints()]
    assert len(three) == 3
    (run / "checkpoints" / ".pruned-step-000000000-dead").mkdir()  # a prune killed mid-delete
    train(TINY_MODEL, tiny_train_config(small_corpus, run, checkpoint_every_steps=2, keep_last=2,
                                        resume=True))  # fmt: skip
    assert [p.name for p in RunFolder(run).complete_checkpoints()] == three[:2]
    assert not list((run / "checkpoints").glob(".pruned-*"))


def test_keep_last_is_a_cli_option_and_rejects_zero(small_corpus, tmp_path):
    result = run_cli("train", "--data", small_corpus, "--out", tmp_path / "run", *TINY_FLAGS,
                     "--max-steps", "6", "--checkpoint-every-steps", "2", "--keep-last", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list(RunFolder(tmp_path / "run").complete_checkpoints())) == 2
    refused = run_cli("train", "--data", small_corpus, "--out", tmp_path / "other", "--keep-last", "0")
    assert refused.returncode == 2 and "keep_last must be a positive integer" in refused.stderr


def _all_finite(path: Path) -> bool:
    return all(bool(t.isfinite().all()) for t in read_tensors(path).values() if t.is_floating_point())


def test_skip_mode_skips_nonfinite_steps_and_never_saves_a_nan(small_corpus, tmp_path):
    # An absurd learning rate: the first update throws the weights to ~1e37, so every later
    # forward pass overflows and its loss is not finite.
    diverging = dict(lr=1e37, grad_clip=1e30, max_steps=12, checkpoint_every_steps=4)
    with pytest.raises(CharRNNError, match="not finite"):
        train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "stop", **diverging))
    assert not list(RunFolder(tmp_path / "stop").complete_checkpoints())

    result = train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "skip", on_nonfinite="skip",
                                                 **diverging))  # fmt: skip
    assert result.step == 12
    run = RunFolder(tmp_path / "skip")
    newest = run.latest_checkpoint()
    state = TrainingState.from_json(parse_trainer(newest / "trainer.safetensors").counters)
    assert state.skipped_steps >= 10 and state.step == 12
    assert math.isfinite(state.epoch_loss_sum)
    for path in (newest / "model.safetensors", run.path / "model.safetensors"):
        assert _all_finite(path)
    assert json.loads((newest / "manifest.json").read_text())["step"] == 12


def test_weights_that_became_nonfinite_are_never_saved(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CharRNNError, match="no longer finite"):
        RunFolder(tmp_path).save_best(model)
    assert not list(tmp_path.iterdir())
