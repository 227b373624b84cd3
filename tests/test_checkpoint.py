import json

import pytest
import torch

from char_rnn.config import ModelConfig
from char_rnn.errors import CharRNNError
from char_rnn.model.network import CharRNNModel
from char_rnn.run.checkpoint import TrainerState, load_weights
from char_rnn.run.folder import RunFolder
from char_rnn.run.storage import read_tensors, write_atomic


def _trainer(step: int) -> TrainerState:
    model = CharRNNModel(ModelConfig(vocab_size=7, embedding_dim=4, units=8, layers=1, cell="gru"))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 3, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    state = TrainerState(
        counters={"step": step, "epoch": 0, "batch": step},
        optimizer=optimizer.state_dict(),
        rng=torch.get_rng_state(),
        hidden=[torch.ones(1, 2, 8)],
    )
    return model, state


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_checkpoint_round_trip_restores_optimizer_and_hidden_state(tmp_path):
    from char_rnn.run.checkpoint import parse_trainer

    model, state = _trainer(3)
    folder = RunFolder(tmp_path).save_checkpoint(model, state)
    restored = parse_trainer(folder / "trainer.safetensors")
    assert restored.counters == state.counters
    assert torch.equal(restored.rng, state.rng)
    assert torch.equal(restored.hidden[0], state.hidden[0])
    fresh = torch.optim.Adam(CharRNNModel(model.config).parameters())
    fresh.load_state_dict(restored.optimizer)
    for a, b in zip(fresh.state_dict()["state"].values(), state.optimizer["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_incomplete_checkpoints_are_ignored(tmp_path):
    run = RunFolder(tmp_path)
    model, state = _trainer(1)
    run.save_checkpoint(model, state)
    _, newer = _trainer(2)
    newest = run.save_checkpoint(model, newer)
    (newest / "manifest.json").unlink()  # as if killed before the commit marker
    assert run.latest_checkpoint().name == "step-000000001"
    _, newest_state = _trainer(3)
    third = run.save_checkpoint(model, newest_state)
    (third / "model.safetensors").write_bytes(b"corrupted")
    assert run.latest_checkpoint().name == "step-000000001"


def test_weights_are_fp32_on_cpu_and_load_into_a_fresh_model(tmp_path):
    model, state = _trainer(1)
    model.to(torch.bfloat16)
    RunFolder(tmp_path).save_checkpoint(model, state)
    tensors = read_tensors(tmp_path / "model.safetensors")
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors.values())
    fresh = CharRNNModel(model.config)
    load_weights(fresh, tmp_path / "model.safetensors")


def test_a_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, tmp_path / "model.safetensors")
    with pytest.raises(CharRNNError, match="not a readable safetensors file"):
        read_tensors(tmp_path / "model.safetensors")
    assert not marker.exists()


def test_config_from_a_newer_version_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"format_version": 99, "model": {}, "vocab": [], "train": {}})
    )
    with pytest.raises(CharRNNError, match="newer char-rnn"):
        RunFolder(tmp_path).read_config()


def test_wrong_shape_weights_are_refused(tmp_path):
    model, state = _trainer(1)
    RunFolder(tmp_path).save_checkpoint(model, state)
    other = CharRNNModel(ModelConfig(vocab_size=7, embedding_dim=4, units=16))
    with pytest.raises(CharRNNError, match="shape"):
        load_weights(other, tmp_path / "model.safetensors")
