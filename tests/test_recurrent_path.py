"""The fused kernels or PyTorch's layers: measured on a shape's first run, cached, and kept
for a run's whole life (char_rnn/train/recurrent_path.py)."""

import json

from conftest import TINY_MODEL, tiny_train_config

from char_rnn.data.encoded import CACHE_ENV
from char_rnn.run.checkpoint import parse_trainer, trainer_bytes
from char_rnn.run.folder import MANIFEST_FILE, TRAINER_FILE
from char_rnn.run.storage import sha256_bytes
from char_rnn.train import train
from char_rnn.train.recurrent_path import CACHE_FILE, FUSED, PATHS, PYTORCH


def _latest_checkpoint(run):
    return sorted((run / "checkpoints").iterdir())[-1]


def _path_of(run) -> str | None:
    return parse_trainer(_latest_checkpoint(run) / TRAINER_FILE).counters.get("recurrent_path")


def _other(path: str) -> str:
    return PYTORCH if path == FUSED else FUSED


def test_the_first_run_of_a_shape_measures_later_runs_follow_the_cache_and_a_run_keeps_its_path(
    small_corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cache = tmp_path / "cache" / CACHE_FILE
    first = tmp_path / "first"
    train(TINY_MODEL, tiny_train_config(small_corpus, first, max_steps=2))
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["path"] in PATHS and _path_of(first) == entry["path"]
    assert set(entry["step_seconds"]) == set(PATHS) and min(entry["step_seconds"].values()) > 0

    # The cache, not a new measurement, decides a later run of the same shape.
    (key,) = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: {"path": _other(entry["path"]), "step_seconds": {}}}))
    second = tmp_path / "second"
    train(TINY_MODEL, tiny_train_config(small_corpus, second, max_steps=2))
    assert _path_of(second) == _other(entry["path"])

    # A resume keeps the path its run started with, whatever the cache says now.
    train(TINY_MODEL, tiny_train_config(small_corpus, first, max_steps=4, resume=True))
    assert parse_trainer(_latest_checkpoint(first) / TRAINER_FILE).counters["step"] == 4
    assert _path_of(first) == entry["path"]


def test_a_run_saved_before_the_choice_existed_resumes_with_the_fused_kernels(
    small_corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(TINY_MODEL, tiny_train_config(small_corpus, run, max_steps=2))
    (tmp_path / "cache" / CACHE_FILE).write_text("{}")  # no choice to follow either
    checkpoint = _latest_checkpoint(run)
    saved = parse_trainer(checkpoint / TRAINER_FILE)
    del saved.counters["recurrent_path"]  # as an earlier version wrote it
    data = trainer_bytes(saved)
    (checkpoint / TRAINER_FILE).write_bytes(data)
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    manifest["files"][TRAINER_FILE] = sha256_bytes(data)
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))
    train(TINY_MODEL, tiny_train_config(small_corpus, run, max_steps=3, resume=True))
    assert _path_of(run) == FUSED
    assert json.loads((tmp_path / "cache" / CACHE_FILE).read_text()) == {}
