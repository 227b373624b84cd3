import json
import math

import pytest
import torch
from conftest import run_cli, tiny_train_config

from char_rnn.config import ModelConfig, from_dict
from char_rnn.model.network import CharRNNModel
from char_rnn.run.checkpoint import parse_trainer
from char_rnn.run.folder import RunFolder
from char_rnn.run.storage import read_tensors
from char_rnn.train.average import WeightAverage
from char_rnn.train.loop import train


def test_the_average_forgets_the_first_weights_then_decays_at_its_rate():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(10.0)
    average = WeightAverage(model, decay=0.9)
    expected = 10.0
    for step, value in enumerate([0.0, 1.0, 2.0, 3.0, 4.0] * 10, start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model, step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        assert math.isclose(float(average.model.weight), expected, rel_tol=1e-5)
    assert float(model.weight.detach()) == 4.0  # the model itself is never touched
    assert 1.0 < float(average.model.weight) < 3.0  # near the middle of the values it saw


def test_validation_and_best_weights_are_the_average(small_corpus, tmp_path):
    run = tmp_path / "run"
    train(ModelConfig(embedding_dim=16, units=32, layers=1, cell="gru", dropout=0.0),
          tiny_train_config(small_corpus, run, epochs=2, ema_decay=0.95))  # fmt: skip
    best, latest = read_tensors(run / "best.safetensors"), read_tensors(run / "model.safetensors")
    assert any(not torch.equal(best[name], latest[name]) for name in latest)
    # The last validation was the best, so best.safetensors is the final average.
    vals = [m["val_loss"] for m in RunFolder(run).read_metrics() if m["kind"] == "val"]
    assert len(vals) == 2 and vals[1] < vals[0]
    (checkpoint,) = RunFolder(run).complete_checkpoints()
    averaged = parse_trainer(checkpoint / "trainer.safetensors").averaged
    model_config = from_dict(ModelConfig, json.loads((run / "config.json").read_text())["model"])
    names = [name for name, _ in CharRNNModel(model_config).named_parameters()]
    assert len(averaged) == len(names) == len(latest)
    assert all(torch.equal(best[name], tensor) for name, tensor in zip(names, averaged, strict=True))
    # The figure validation logged is what `char-rnn eval` measures on best.safetensors.
    evaluated = run_cli("eval", run, "--checkpoint", "best", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert math.isclose(json.loads(evaluated.stdout)["loss"], min(vals), rel_tol=1e-4)


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_resume_restores_the_average_exactly(small_corpus, tmp_path, decay):
    model = ModelConfig(embedding_dim=16, units=32, layers=1, cell="gru", dropout=0.0)
    common = dict(epochs=2, ema_decay=decay, checkpoint_every_steps=10)
    train(model, tiny_train_config(small_corpus, tmp_path / "whole", max_steps=60, **common))
    train(model, tiny_train_config(small_corpus, tmp_path / "pieces", max_steps=25, **common))
    train(model, tiny_train_config(small_corpus, tmp_path / "pieces", max_steps=60, resume=True, **common))
    whole, pieces = (
        parse_trainer(RunFolder(tmp_path / name).latest_checkpoint() / "trainer.safetensors").averaged
        for name in ("whole", "pieces")
    )
    assert (len(whole) > 0) == (decay > 0)
    assert all(torch.equal(a, b) for a, b in zip(whole, pieces, strict=True))
