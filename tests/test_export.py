"""ONNX export and the onnxruntime engine: the same logits, the same text."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, run_cli, tiny_train_config
from test_server import shared_tiny_run

from char_rnn import CharRNN, CharRNNError, UsageError, train
from char_rnn.config import to_dict
from char_rnn.model.network import CharRNNModel, state_tensors
from char_rnn.onnx.export import ONNX_FILE, OneStep, export
from char_rnn.run.checkpoint import weights_bytes
from char_rnn.run.folder import MODEL_FILE, RunFolder
from char_rnn.run.storage import write_atomic


def trained(folder: Path, text: str, **model_changes) -> Path:
    corpus = folder / "small.txt"
    corpus.write_text(text[:20_000], encoding="utf-8")
    run = folder / "run"
    train(replace(TINY_MODEL, **model_changes), tiny_train_config(corpus, run, max_steps=20))
    return run


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory, shakespeare_text) -> Path:
    copy = tmp_path_factory.mktemp("gru") / "run"
    return Path(shutil.copytree(shared_tiny_run(tmp_path_factory, shakespeare_text), copy))


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, shakespeare_text) -> Path:
    run = trained(tmp_path_factory.mktemp("lstm"), shakespeare_text, cell="lstm", layers=2)
    export(run)
    return run


@pytest.mark.slow  # kept out of the default run for its time budget (pytest -m slow runs it)
def test_cli_export_then_greedy_text_is_the_same_on_both_engines(gru_run):
    done = run_cli("export", gru_run, "--format", "onnx")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {gru_run / ONNX_FILE}"
    greedy = ("generate", gru_run, "--start", "ROMEO:", "--length", "200", "--temperature", "0")
    onnx = run_cli(*greedy, "--engine", "onnx")
    torch_text = run_cli(*greedy, "--engine", "reference")
    assert onnx.returncode == 0 and torch_text.returncode == 0, onnx.stderr + torch_text.stderr
    assert onnx.stdout.startswith("ROMEO:") and len(onnx.stdout) > 200
    assert onnx.stdout == torch_text.stdout
    fast = run_cli(*greedy)  # the default engine (int8 recurrent weights)
    assert fast.returncode == 0, fast.stderr
    assert onnx.stdout == fast.stdout


def test_two_layer_lstm_greedy_text_is_the_same_on_both_engines(lstm_run):
    onnx = CharRNN.load(lstm_run, engine="onnx").generate("JULIET:", 300, temperature=0)
    reference = CharRNN.load(lstm_run, engine="reference").generate("JULIET:", 300, temperature=0)
    assert onnx == reference


def test_seeded_samples_are_the_same_on_both_engines(lstm_run):
    options = dict(temperature=0.9, top_k=12, top_p=0.95, seed=4, num_samples=3)
    onnx = CharRNN.load(lstm_run, engine="onnx").generate("A", 150, **options)
    reference = CharRNN.load(lstm_run, engine="reference").generate("A", 150, **options)
    assert onnx == reference and len(set(onnx)) == 3


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("gru", 3), ("lstm", 2), ("rnn", 2)])
def test_exported_step_gives_the_models_logits_and_state(tmp_path, cell, layers):
    """Any cell and depth: same logits and state as the model, for a batch, from a non-zero state."""
    import onnxruntime

    torch.manual_seed(0)
    model = CharRNNModel(replace(TINY_MODEL, vocab_size=30, cell=cell, layers=layers)).eval()
    path = tmp_path / "step.onnx"
    export_model(model, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, 30, (3, 7))
    state = [torch.randn(t.shape) for t in state_tensors(model.initial_state(3))]
    names = ["h", "c"][: len(state)]
    outputs = session.run(
        None, {"ids": ids.numpy(), **{n: s.numpy() for n, s in zip(names, state, strict=True)}}
    )
    with torch.no_grad():
        expected = OneStep(model)(ids, *state)
    assert len(outputs) == len(expected) == 1 + len(state)
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def export_model(model, path: Path) -> None:
    """Export an in-memory model through a run folder, as `char-rnn export` does."""
    run = path.parent / "run"
    run.mkdir()
    vocab = [chr(ord("a") + i) for i in range(model.config.vocab_size)]
    RunFolder(run).write_config({"model": to_dict(model.config), "vocab": vocab, "train": {}})
    write_atomic(run / MODEL_FILE, weights_bytes(model))
    export(run, out=path)


def test_an_export_of_other_weights_is_refused(lstm_run, tmp_path):
    run = Path(shutil.copytree(lstm_run, tmp_path / "copy"))
    model = CharRNN.load(run).model
    with torch.no_grad():
        model.head.bias.add_(0.5)
    write_atomic(run / MODEL_FILE, weights_bytes(model))  # as if training had gone on
    with pytest.raises(CharRNNError, match="export again: char-rnn export"):
        CharRNN.load(run, engine="onnx")


def test_generating_before_exporting_says_what_to_run(gru_run, tmp_path):
    run = Path(shutil.copytree(gru_run, tmp_path / "copy"))
    (run / ONNX_FILE).unlink(missing_ok=True)
    with pytest.raises(CharRNNError, match=r"model.onnx is missing; write it with: char-rnn export"):
        CharRNN.load(run, engine="onnx")


def test_the_onnx_engine_runs_on_the_cpu_only(lstm_run):
    with pytest.raises(UsageError, match="the onnx engine runs on the CPU only; use device cpu, not 'cuda'"):
        CharRNN.load(lstm_run, engine="onnx", device="cuda")
    done = run_cli("generate", lstm_run, "--engine", "onnx", "--device", "cuda", "--length", "5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "device cpu" in done.stderr
