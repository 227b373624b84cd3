"""The thread count: pinned where asked, measured and re-measured otherwise (threads.py);
busy processes beside a measurement (busy.py); the native build outside --max-time."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from conftest import TINY_FLAGS, TINY_MODEL, run_cli, tiny_train_config

from char_rnn.busy import busy_cores, max_busy
from char_rnn.cli import main
from char_rnn.config import ModelConfig
from char_rnn.errors import UsageError
from char_rnn.model import network
from char_rnn.model.network import CharRNNModel
from char_rnn.run.checkpoint import parse_trainer
from char_rnn.threads import (
    THREADS_ENV,
    ThreadChoice,
    candidate_counts,
    depends_on_thread_count,
    thread_choice,
)
from char_rnn.train import loop
from char_rnn.train.loop import train

two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two cores"
)


def test_a_count_asked_for_or_in_the_environment_pins_the_choice(monkeypatch):
    assert thread_choice(3).chosen == 3 and not thread_choice(3).measuring
    monkeypatch.setenv(THREADS_ENV, "2")
    assert thread_choice().pinned == 2
    assert thread_choice(1).pinned == 1  # the argument wins over the environment
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(UsageError, match=THREADS_ENV):
        thread_choice()
    with pytest.raises(UsageError, match="positive"):
        thread_choice(0)


def test_candidates_reach_every_core_without_trying_every_count():
    assert candidate_counts(1) == (1,)
    assert candidate_counts(2) == (1, 2)
    assert candidate_counts(12) == (1, 2, 4, 8, 12)


def test_a_unit_leaves_the_process_thread_count_as_it_found_it():
    before = torch.get_num_threads()
    choice = ThreadChoice(candidates=(1, 2), warmup=0)
    for _ in range(6):
        with choice.unit() as threads:
            assert torch.get_num_threads() == threads
        assert torch.get_num_threads() == before


def test_a_count_fast_once_by_luck_is_not_kept_and_is_tried_in_pieces():
    # Beside a busy core a short trial of two threads can fall inside one scheduler slice and
    # look fast; the units after it are slow. The choice goes by the mean of the trials, and a
    # count other than the kept one is only ever tried on pieces of a unit.
    choice = ThreadChoice(candidates=(1, 2), warmup=0, min_piece=0.0)
    shares_of_two = []
    while choice.probes < 1:
        share = choice.share()
        with choice.unit(share) as threads:
            if threads == 2:
                shares_of_two.append(share)
                seconds_per_unit = 0.004 if len(shares_of_two) == 1 else 0.2  # lucky, then slow
            else:
                seconds_per_unit = 0.02
            time.sleep(seconds_per_unit * share)
    assert choice.chosen == 1, f"choices made: {choice.history}"
    assert shares_of_two and all(share < 1 for share in shares_of_two)


def _small_parallel_work() -> None:
    """Many short parallel regions, as a small model's step has: each waits for every thread."""
    x = torch.ones(200_000)
    for _ in range(40):
        x.add_(1.0).mul_(0.5)


@two_cores
def test_the_choice_moves_to_one_thread_when_busy_processes_take_a_core():
    # Two busy processes pinned to core 0: a second thread there gets a third of a core, and
    # every parallel region waits for it, while one thread runs freely on core 1. Before they
    # start the choice is whatever this machine's load makes it; after, a probe (started by the
    # slowdown or the short period) must keep one thread.
    choice = ThreadChoice(candidates=(1, 2), warmup=1, reprobe_seconds=0.2, min_gap=0.0)
    while choice.probes < 1:
        with choice.unit():
            _small_parallel_work()
    before = choice.probes
    with busy_cores(2, core=0):
        deadline = time.monotonic() + 60
        while choice.probes < before + 2 and time.monotonic() < deadline:
            with choice.unit():
                _small_parallel_work()
    assert choice.probes >= before + 2, "no probe finished beside the busy processes"
    assert choice.chosen == 1, f"choices made: {choice.history}"


def test_busy_processes_run_in_the_block_and_are_gone_after_it_even_on_an_error():
    with pytest.raises(RuntimeError), busy_cores(2) as processes:
        assert len(processes) == 2 and all(p.poll() is None for p in processes)
        raise RuntimeError("the measurement failed")
    assert all(p.poll() is not None for p in processes)
    with pytest.raises(UsageError, match="4 per core"), busy_cores(max_busy() + 1):
        pass


def test_depends_on_thread_count_tells_figures_that_follow_the_count_from_those_that_do_not():
    def counted():
        return [torch.tensor(torch.get_num_threads())]

    def fixed():
        return [torch.arange(5.0).sum()]

    assert depends_on_thread_count(counted, (1, 2))
    assert not depends_on_thread_count(fixed, (1, 2))


@pytest.mark.skipif(len(candidate_counts()) < 2, reason="one core: a run's thread count cannot change")
def test_a_resumed_run_keeps_the_gradient_layout_its_start_chose(small_corpus, tmp_path, monkeypatch):
    # A run chooses its fused layers' weight-gradient layout before its first step
    # (CharRNNModel.choose_gradient_layout); the layouts round differently, so a resume must
    # take the one in the checkpoint even where its own check would now choose the other.
    # Here the start finds the numbers depend on the thread count with either (so the faster
    # layout, and the count timed at the start kept), the resume's check the other layout.
    def layout_found(transposed):
        monkeypatch.setattr(network, "first_thread_invariant", lambda options, figures, counts: transposed)

    monkeypatch.setattr(loop.recurrent_path, "cached_path", lambda shape: loop.recurrent_path.FUSED)
    # Large enough that the two layouts round differently (checked at the end).
    model = ModelConfig(embedding_dim=32, units=64, layers=2, cell="lstm", dropout=0.0)
    common = dict(precision="bf16", epochs=50, max_steps=24, batch_size=32, seq_length=128)
    layout_found(None)
    train(model, tiny_train_config(small_corpus, tmp_path / "whole", **common))
    for stop in (12, 24):
        layout_found(None if stop == 12 else True)
        train(
            model,
            tiny_train_config(
                small_corpus, tmp_path / "pieces", resume=stop > 12, **{**common, "max_steps": stop}
            ),
        )
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert whole == (tmp_path / "pieces" / "model.safetensors").read_bytes()
    # The layouts' rounding differs here, or the resume above would prove nothing.
    layout_found(True)
    train(model, tiny_train_config(small_corpus, tmp_path / "transposed", **common))
    assert whole != (tmp_path / "transposed" / "model.safetensors").read_bytes()


def test_the_faster_gradient_layout_is_chosen_where_it_keeps_the_numbers_of_every_thread_count():
    model = CharRNNModel(ModelConfig(vocab_size=5, embedding_dim=4, units=8, layers=1, cell="gru"))
    tried = []

    def figures(count_matters_with):
        def step_figures():
            tried.append(model.gates_transposed)
            varies = model.gates_transposed in count_matters_with
            return [torch.tensor(torch.get_num_threads() if varies else 0)]

        return step_figures

    assert model.choose_gradient_layout(figures(()), (1, 2)) and not model.gates_transposed
    assert model.choose_gradient_layout(figures((False,)), (1, 2)) and model.gates_transposed
    assert not model.choose_gradient_layout(figures((False, True)), (1, 2)) and not model.gates_transposed
    assert tried == [False] * 2 + [False] * 2 + [True] * 2 + [False] * 2 + [True] * 2


def test_a_run_records_whether_its_numbers_depend_on_the_thread_count(small_corpus, tmp_path):
    # Checked once, before the clock: a resume reads the answer instead of measuring again,
    # and where the numbers do depend on the count, the count chosen then is kept.
    train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", max_steps=3))
    (checkpoint,) = (tmp_path / "run" / "checkpoints").iterdir()
    counters = parse_trainer(checkpoint / "trainer.safetensors").counters
    if len(candidate_counts()) > 1:
        assert counters["threads_invariant"] in (True, False)
        assert (counters["threads"] is None) == counters["threads_invariant"]
    assert "threads" not in json.loads((tmp_path / "run" / "config.json").read_text())["train"]


def test_cli_threads_and_busy_flags(small_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_corpus), "--out", str(out), *TINY_FLAGS, "--max-steps", "3",
                 "--threads", "1", "--quiet"]) == 0  # fmt: skip
    bench = run_cli("bench", "train", "--cell", "gru", "--layers", "1", "--units", "32",
                    "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "8", "--steps", "1",
                    "--precision", "fp32", "--busy", "1")  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "beside 1 busy process" in bench.stdout and "threads" in bench.stdout
    capsys.readouterr()
    assert main(["eval", str(out), "--threads", "1", "--window", "0"]) == 0
    assert "bits/char" in capsys.readouterr().out
    for bad in (["train", "--data", str(small_corpus), "--out", str(tmp_path / "bad"), "--threads", "0"],
                ["bench", "generate", "--busy", str(max_busy() + 1)],
                ["eval", str(out), "--threads", "-1"]):  # fmt: skip
        assert main(bad) == 2
        error = capsys.readouterr().err
        assert error.startswith("char-rnn: error:") and error.count("\n") == 1, error


@pytest.mark.slow
def test_the_first_build_of_the_time_loop_is_not_counted_in_max_time(small_corpus, tmp_path):
    # A fresh kernel cache: this run compiles the time loop (about half a minute) before its
    # clock starts, says so on one line, and then still trains within its one second.
    out = tmp_path / "run"
    result = run_cli("train", "--data", small_corpus, "--out", out, *TINY_FLAGS, "--max-time", "1",
                     "--epochs", "1000", env={"TORCH_EXTENSIONS_DIR": str(tmp_path / "kernels"),
                                              "CHAR_RNN_NATIVE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("building the compiled time loop") == 1
    assert any((tmp_path / "kernels").rglob("*.so")), "the time loop was not built in the fresh cache"
    stop = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert stop["kind"] == "stop" and stop["reason"] == "max_time" and stop["step"] >= 10
