"""The CLI through real subprocesses, as a user types it."""

import json
import re

import pytest
from conftest import TINY_FLAGS, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shakespeare_text):
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare_text[:30_000])
    run = folder / "run"
    done = run_cli("train", "--data", corpus, "--out", run, "--max-steps", "60", *TINY_FLAGS)
    assert done.returncode == 0, done.stderr
    return run, corpus, done


def test_train_reports_loss_and_speed(trained_run):
    _, _, done = trained_run
    assert "step 60: loss" in done.stderr and "chars/s" in done.stderr
    assert "validation loss" in done.stdout
    assert "Traceback" not in done.stderr


def test_generate_streams_the_start_string_then_text(trained_run):
    run, _, _ = trained_run
    done = run_cli("generate", run, "--start", "ROMEO:", "--length", "120", "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ROMEO:")
    assert len(done.stdout.rstrip("\n")) >= len("ROMEO:") + 100
    again = run_cli("generate", run, "--start", "ROMEO:", "--length", "120", "--seed", "7")
    assert again.stdout == done.stdout


def test_greedy_generation_is_deterministic_without_a_seed(trained_run):
    run, _, _ = trained_run
    a = run_cli("generate", run, "--temperature", "0", "--length", "50")
    b = run_cli("generate", run, "--temperature", "0", "--length", "50")
    assert a.stdout == b.stdout and a.returncode == 0


def test_many_samples_at_once(trained_run):
    run, _, _ = trained_run
    done = run_cli("generate", run, "--num-samples", "3", "--length", "40", "--seed", "1",
                   "--top-k", "5", "--top-p", "0.9")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("==> sample") == 3


def test_eval_json_figures(trained_run):
    run, corpus, _ = trained_run
    done = run_cli("eval", run, "--data", corpus, "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert set(figures) >= {"loss", "bpc", "perplexity", "chars"}
    assert figures["chars"] == 29_999
    assert figures["bpc"] == pytest.approx(figures["loss"] / 0.6931471805599453)
    assert 1.0 < figures["loss"] < 4.2


def test_eval_defaults_to_the_runs_validation_text(trained_run):
    run, corpus, _ = trained_run
    done = run_cli("eval", run, "--json")
    figures = json.loads(done.stdout)
    assert figures["chars"] == 2_999
    assert json.loads(run_cli("eval", run, "--data", corpus, "--split", "val", "--json").stdout) == figures
    text = run_cli("eval", run, "--window", "100")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert re.fullmatch(r"val text of .*small\.txt: 2,999 characters", lines[0]), lines
    assert re.fullmatch(r"loss \d\.\d{4} nats/char, \d\.\d{4} bits/char, perplexity \d+\.\d{3}", lines[1])
    assert re.fullmatch(r"loss over independent 100-character windows: \d\.\d{4}", lines[2])
    assert len(lines) == 3


def test_resume_continues_to_a_larger_total(trained_run, tmp_path):
    run, corpus, _ = trained_run
    done = run_cli("train", "--resume", "--data", corpus, "--out", run, "--max-steps", "80", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "step 80" in done.stdout


@pytest.mark.parametrize(
    "args, status, message",
    [
        (("train", "--batch-size", "0"), 2, "batch_size must be a positive integer"),
        (("train", "--lr", "nan"), 2, "lr must be a finite number"),
        (("train", "--cell", "transformer"), 2, "invalid choice"),
        (("train", "--data", "/nonexistent/corpus.txt"), 1, "does not exist"),
        (("generate", "/nonexistent/run"), 1, "does not exist"),
        (("frobnicate",), 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_with_the_right_status(tmp_path, args, status, message):
    done = run_cli(*args, "--out", tmp_path / "o") if args[0] == "train" else run_cli(*args)
    assert done.returncode == status
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_start_characters_are_listed(trained_run):
    run, _, _ = trained_run
    done = run_cli("generate", run, "--start", "Ωmega")
    assert done.returncode == 1
    assert "'Ω'" in done.stderr and "vocabulary" in done.stderr


@pytest.mark.slow  # kept out of the default run for its time budget (pytest -m slow runs it)
def test_help_has_examples():
    for command in ("train", "generate", "eval"):
        done = run_cli(command, "--help")
        assert done.returncode == 0 and "examples:" in done.stdout
