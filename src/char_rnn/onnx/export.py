"""ONNX export: the model as one step of generation, with its state in and out.

The exported graph takes ids (B, T) int64 and the state, h (L, B, H) plus c (L, B, H)
for an LSTM, and returns the logits of the last position (B, V) with the new state.
While generating T is 1; the start string can be fed whole, once, as sample.py does.
Input and output names are fixed (ids, h, c -> logits, h_out, c_out) so that any ONNX
runtime can drive the file. The sha256 of the weights it was made from is kept in its
metadata, so that a stale export is refused rather than silently used.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CharRNNError, UsageError, require_extra
from ..model.network import CharRNNModel, state_from_tensors, state_tensors
from ..run.folder import ONNX_FILE, RunFolder
from ..run.storage import sha256_file, write_atomic
from . import FORMATS

OPSET = 17
WEIGHTS_SHA256_KEY = "char_rnn.weights_sha256"
CHECKPOINT_KEY = "char_rnn.checkpoint"


def state_names(cell: str) -> list[str]:
    return ["h", "c"] if cell == "lstm" else ["h"]


class OneStep(nn.Module):
    """forward(ids (B, T), *state tensors) -> (logits (B, V) of the last position, *state)."""

    def __init__(self, model: CharRNNModel):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model(ids, state_from_tensors(list(state)))
        return (logits[:, -1], *state_tensors(new_state))


def export_onnx(
    run: str | os.PathLike, *, which: str = "latest", out: str | os.PathLike | None = None
) -> Path:
    """Write the run's weights (`which`: latest or best) as an ONNX one-step model; return its path."""
    from ..api import CharRNN

    onnx = require_extra("onnx", "onnx", "char-rnn export")

    folder = RunFolder(run)
    weights = folder.weights_path(which)
    model = CharRNN.load(run, which=which, device="cpu").model.float().eval()
    config = model.config
    names = state_names(config.cell)
    ids = torch.zeros(1, 1, dtype=torch.long)
    state = state_tensors(model.initial_state(1, "cpu"))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter needs no extra packages and handles nn.GRU/LSTM/RNN;
        # torch marks it deprecated in favour of the dynamo one, which needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OneStep(model),
            (ids, *state),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["ids", *names],
            output_names=["logits", *(f"{name}_out" for name in names)],
            dynamic_axes={
                "ids": {0: "B", 1: "T"},
                "logits": {0: "B"},
                **{name: {1: "B"} for name in names},
                **{f"{name}_out": {1: "B"} for name in names},
            },
        )
    graph = onnx.load_model_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {WEIGHTS_SHA256_KEY: sha256_file(weights), CHECKPOINT_KEY: which})
    onnx.checker.check_model(graph)
    path = Path(out) if out is not None else folder.path / ONNX_FILE
    try:
        write_atomic(path, graph.SerializeToString())
    except OSError as error:
        raise CharRNNError(f"cannot write {path}: {error.strerror}") from None
    return path


def export(
    run: str | os.PathLike,
    *,
    format: str = "onnx",
    which: str = "latest",
    out: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Write the run's weights (`which`) in `format` (see FORMATS) to `out`; return its path.
    `force` lets the web format replace a folder that is not empty."""
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if format == "web":
        from ..web.export import export_web

        return export_web(run, which=which, out=out, force=force)
    return export_onnx(run, which=which, out=out)
