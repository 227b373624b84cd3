"""Training curves: drawn from metrics.jsonl by `char-rnn plot` and when training ends."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from conftest import TINY_MODEL, run_cli, tiny_train_config
from test_server import shared_tiny_run

from char_rnn import CharRNNError, train
from char_rnn.run.curves import CURVES_FILE, curves, plot_run, time_unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shakespeare_text) -> Path:
    return shared_tiny_run(tmp_path_factory, shakespeare_text)


def test_training_leaves_its_curves_in_the_run_folder(tiny_run):
    data = (tiny_run / CURVES_FILE).read_bytes()
    width, height = png_size(data)
    assert width >= 800 and 300 <= height <= width
    assert len(data) > 20_000  # axes, labels and two curves, not an empty canvas


def test_cli_plot_writes_the_png_where_asked(tiny_run, tmp_path):
    out = tmp_path / "curves.png"
    done = run_cli("plot", tiny_run, "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {out}"
    width, height = png_size(out.read_bytes())
    assert (width, height) == png_size((tiny_run / CURVES_FILE).read_bytes())


def test_a_run_without_metrics_cannot_be_plotted(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharRNNError, match="no metrics.jsonl yet"):
        plot_run(tmp_path / "empty")
    with pytest.raises(CharRNNError, match="does not exist"):
        plot_run(tmp_path / "nowhere")


def test_curves_follow_steps_and_a_resume_overrides_what_it_redoes():
    records = [
        {"kind": "train", "step": 10, "time": 1.0, "loss": 4.0},
        {"kind": "train", "step": 20, "time": 2.0, "loss": 3.5},
        {"kind": "val", "step": 20, "time": 2.1, "val_loss": 3.6},
        {"kind": "epoch_train", "step": 20, "time": 2.1, "train_loss": 3.7},
        # resumed from the checkpoint at step 10: step 20 is done again
        {"kind": "train", "step": 20, "time": 2.5, "loss": 3.4},
        {"kind": "train", "step": 30, "time": 3.5, "loss": float("nan")},
        {"kind": "stop", "step": 30, "time": 3.6, "reason": "max_steps"},
    ]
    train_curve, val_curve = curves(records)
    assert train_curve.steps == [10, 20] and train_curve.loss == [4.0, 3.4]
    assert train_curve.seconds == [1.0, 2.5]
    assert val_curve.steps == [20] and val_curve.loss == [3.6]


def test_time_axis_unit_fits_the_run_length():
    assert time_unit(90)[0] == "seconds"
    assert time_unit(1800)[0] == "minutes"
    assert time_unit(6 * 3600)[0] == "hours"


def test_a_picture_that_cannot_be_written_does_not_fail_training(tmp_path, shakespeare_text, caplog):
    corpus = tmp_path / "small.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    run = tmp_path / "run"
    (run / CURVES_FILE).mkdir(parents=True)  # a folder where the PNG should go
    result = train(TINY_MODEL, tiny_train_config(corpus, run, max_steps=3))
    assert result.step == 3 and (run / "model.safetensors").is_file()
    assert "training curves not drawn" in caplog.text
    shutil.rmtree(run / CURVES_FILE)
