"""Property tests: every loader fed arbitrary, truncated or lying bytes fails with a
CharRNNError (never another exception), quickly (Hypothesis's deadline catches a hang) and
without reading what a header merely claims."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from char_rnn.config import ModelConfig
from char_rnn.errors import CharRNNError
from char_rnn.model.network import CharRNNModel
from char_rnn.run.checkpoint import TrainerState, load_weights, parse_trainer, trainer_bytes, weights_bytes
from char_rnn.run.folder import RunFolder
from char_rnn.run.storage import read_tensors

FUZZ = settings(
    max_examples=60,
    deadline=3000,  # generous for a loaded machine; a hang or a 2**60-byte read takes far longer
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODEL = CharRNNModel(ModelConfig(vocab_size=5, embedding_dim=3, units=4))


def _valid_trainer() -> bytes:
    optimizer = torch.optim.Adam(MODEL.parameters())
    MODEL(torch.zeros(1, 2, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    state = TrainerState(
        {"step": 1, "epoch": 0, "batch": 1}, optimizer.state_dict(), torch.get_rng_state(), []
    )
    return trainer_bytes(state)


VALID_WEIGHTS = weights_bytes(MODEL)
VALID_TRAINER = _valid_trainer()


def _header(claimed_length: int, rest: bytes = b"{}") -> bytes:
    return struct.pack("<Q", claimed_length) + rest


# Bytes of every kind: random, a valid file cut short or with a byte changed, a header that lies.
def _damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    truncated = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    flipped = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
        lambda f: valid[: f[0]] + bytes([f[1]]) + valid[f[0] + 1 :]
    )
    lying = st.integers(len(valid), 2**64 - 1).map(lambda n: struct.pack("<Q", n) + valid[8:])
    return st.one_of(st.binary(max_size=2048), truncated, flipped, lying)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _only_charrnn_errors(load) -> None:
    with contextlib.suppress(CharRNNError):  # any other exception fails the test
        load()


@FUZZ
@given(data=_damaged(VALID_WEIGHTS))
@example(data=_header(2**60))
@example(data=_header(2**64 - 1))
@example(data=_header(40, b'{"w":{"dtype":"F32","shape":[1073741824,1073741824],"data_offsets":[0,4]}}'))
def test_weights_loaders_raise_only_charrnn_errors(folder, data):
    path = _write(folder, "model.safetensors", data)
    _only_charrnn_errors(lambda: read_tensors(path))
    _only_charrnn_errors(lambda: load_weights(CharRNNModel(MODEL.config), path))


@FUZZ
@given(data=_damaged(VALID_TRAINER))
@example(data=_header(2**60))
def test_trainer_loader_raises_only_charrnn_errors(folder, data):
    path = _write(folder, "trainer.safetensors", data)
    _only_charrnn_errors(lambda: parse_trainer(path))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
CONFIG = {"format_version": 1, "model": {"units": 4}, "vocab": ["a", "b"], "train": {}}


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(list(CONFIG)), JSON_VALUES).map(
            lambda d: json.dumps({**CONFIG, **d}).encode()
        ),
        _damaged(json.dumps(CONFIG).encode()),
    )
)
@example(data=b"[" * 100_000)
def test_run_config_loader_raises_only_charrnn_errors(tmp_path_factory, data):
    run = tmp_path_factory.mktemp("run")
    _write(run, "config.json", data)
    _only_charrnn_errors(lambda: RunFolder(run).read_config())


@FUZZ
@given(manifest=st.one_of(st.binary(max_size=512), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
@example(manifest=json.dumps({"files": {"../../etc/passwd": "0" * 64}}).encode())
@example(manifest=json.dumps({"files": {"model.safetensors": 5}}).encode())
def test_a_manifest_never_makes_a_checkpoint_complete_by_accident(tmp_path_factory, manifest):
    run = RunFolder(tmp_path_factory.mktemp("run"))
    checkpoint = run.checkpoints / "step-000000001"
    checkpoint.mkdir(parents=True)
    _write(checkpoint, "model.safetensors", VALID_WEIGHTS)
    _write(checkpoint, "manifest.json", manifest)
    assert run.is_complete(checkpoint) in (True, False)
    if not run.is_complete(checkpoint):
        with pytest.raises(CharRNNError):
            run.latest_checkpoint()
