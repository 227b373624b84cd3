"""`char-rnn info`, and the command line's manners: examples in every --help, progress
bars with an ETA on a terminal and never in a pipe."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, run_cli
from test_server import shared_tiny_run

from char_rnn.cli import build_parser, main
from char_rnn.config import ModelConfig, from_dict
from char_rnn.model.network import CharRNNModel


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shakespeare_text) -> Path:
    return shared_tiny_run(tmp_path_factory, shakespeare_text)


def test_info_json_sums_up_the_run(tiny_run):
    done = run_cli("info", tiny_run, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    saved = json.loads((tiny_run / "config.json").read_text())
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert info["parameters"] == CharRNNModel(from_dict(ModelConfig, saved["model"])).num_parameters()
    assert info["vocab_size"] == len(saved["vocab"]) and info["vocab_preview"].startswith("\\n␠!")
    assert info["steps"] == 30 and info["epochs"] == 1 and info["stopped"] == "max_steps"
    assert info["best_val_loss"] == min(r["val_loss"] for r in metrics if r["kind"] == "val")
    assert info["last_train_loss"] == [r["loss"] for r in metrics if r["kind"] == "train"][-1]
    assert info["checkpoints"] == ["step-000000030"]
    assert {"model.safetensors", "best.safetensors", "curves.png"} <= set(info["files"])


def test_info_text_is_readable(tiny_run, capsys):
    assert main(["info", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"GRU, 1 x 48 units, embedding 16, dropout 0.0: [\d,]+ parameters", out)
    assert "training     30 steps, 1 epoch(s)" in out and "stopped by max_steps" in out
    assert re.search(r"best val     \d\.\d{4} \(\d\.\d{3} bpc\) at step 30", out)


def test_info_on_a_missing_run_is_one_line(tmp_path):
    done = run_cli("info", tmp_path / "nothing")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr


def test_every_command_has_examples_in_its_help(capsys):
    commands = ("train", "generate", "eval", "serve", "export", "plot", "info")
    assert set(commands) <= set(build_parser()._subparsers._group_actions[0].choices)
    for name in commands:
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0
        assert f"examples:\n  char-rnn {name}" in capsys.readouterr().out, name


def train_args(corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "char_rnn", "train", "--data", str(corpus), "--out", str(out),
            "--max-steps", "10", *TINY_FLAGS]  # fmt: skip


def test_training_shows_a_progress_bar_with_eta_on_a_terminal(tmp_path, shakespeare_text):
    corpus = tmp_path / "small.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(train_args(corpus, tmp_path / "run"), stdin=follower, stdout=follower,
                               stderr=follower, env={**os.environ, "TERM": "xterm"})  # fmt: skip
    os.close(follower)
    output = bytearray()
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed with the last writer
            break
        if not data:
            break
        output += data
    os.close(leader)
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    # tqdm's bar: "10/10 [00:03<00:00, 6.1step/s, loss=...]": elapsed < remaining.
    assert re.search(r"\d+/10 \[\d\d:\d\d<\d\d:\d\d", text), text
    assert "\r" in text


def test_no_progress_bar_when_output_is_not_a_terminal(tmp_path, shakespeare_text):
    corpus = tmp_path / "small.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    done = subprocess.run(train_args(corpus, tmp_path / "run"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step 10: loss" in done.stderr
    assert "\r" not in done.stderr and "step/s" not in done.stderr and "\x1b[" not in done.stderr
