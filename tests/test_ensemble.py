"""Ensembles: several runs of one corpus read as one model (model/ensemble.py), through the
API and `char-rnn eval/generate --ensemble`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, run_cli, tiny_train_config

from char_rnn import CharRNN
from char_rnn.train.loop import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_text):
    """Two runs of one corpus from different seeds, and one of another alphabet."""
    folder = tmp_path_factory.mktemp("ensemble")
    corpus = folder / "corpus.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    other = folder / "other.txt"
    other.write_text("abcab cab bca " * 400, encoding="utf-8")
    made = {}
    for name, data, seed in (("a", corpus, 0), ("b", corpus, 1), ("other", other, 0)):
        made[name] = folder / name
        train(TINY_MODEL, tiny_train_config(data, made[name], seed=seed))
    made["text"] = shakespeare_text[30_000:32_000]
    return made


def _log_probs(run, text: str) -> torch.Tensor:
    """Each next character's log-probability under one run's model, the text read whole."""
    model = CharRNN.load(run)
    ids = torch.from_numpy(model.encode_text(text).astype("int64"))
    with torch.no_grad():
        logits, _ = model.model(ids[:-1].unsqueeze(0))
    return F.log_softmax(logits[0], -1).gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1)


def test_the_ensembles_loss_is_that_of_the_members_mean_probability(runs):
    a, b = _log_probs(runs["a"], runs["text"]), _log_probs(runs["b"], runs["text"])
    expected = -(torch.logaddexp(a, b) - math.log(2)).mean().item()
    ensemble = CharRNN.load(runs["a"], ensemble=[runs["b"]])
    assert ensemble.evaluate(runs["text"], streams=1).loss == pytest.approx(expected, rel=1e-5)


def test_eval_and_generate_take_ensemble_runs(runs, tmp_path):
    single = json.loads(run_cli("eval", runs["a"], "--json").stdout)
    both = run_cli("eval", runs["a"], "--ensemble", runs["b"], "--json")
    assert both.returncode == 0, both.stderr
    api = CharRNN.load(runs["a"], ensemble=[runs["b"]]).evaluate_file()
    assert json.loads(both.stdout)["loss"] == pytest.approx(api.loss, rel=1e-6)
    assert json.loads(both.stdout)["loss"] != pytest.approx(single["loss"], rel=1e-4)
    flags = ("generate", runs["a"], "--ensemble", runs["b"], "--start", "ROMEO:", "--length", "80")
    first, again = run_cli(*flags, "--seed", "3"), run_cli(*flags, "--seed", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout and first.stdout.startswith("ROMEO:")
    expected = CharRNN.load(runs["a"], ensemble=[runs["b"]]).generate("ROMEO:", 80, seed=3)
    assert first.stdout.rstrip("\n") == expected.rstrip("\n")
    beam = run_cli(*flags, "--beam", "3")
    assert beam.returncode == 0 and beam.stdout.startswith("ROMEO:"), beam.stderr


def test_runs_of_other_characters_or_adaptation_are_refused_in_one_line(runs, tmp_path):
    other = run_cli("eval", runs["a"], "--ensemble", runs["other"])
    assert other.returncode == 2 and "share one vocabulary" in other.stderr
    assert other.stderr.count("\n") == 1
    adapt = run_cli("eval", runs["a"], "--ensemble", runs["b"], "--adapt")
    assert adapt.returncode == 2 and adapt.stderr.count("\n") == 1
    onnx = run_cli("generate", runs["a"], "--ensemble", runs["b"], "--engine", "onnx")
    assert onnx.returncode == 2 and onnx.stderr.count("\n") == 1
