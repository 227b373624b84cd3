"""What a run folder holds, summed up for `char-rnn info`: model, vocabulary, history, files.

Read from config.json, metrics.jsonl and the safetensors headers only: no weights are
loaded, so it is quick even for a large model.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CharRNNError
from .folder import BEST_FILE, CURVES_FILE, MODEL_FILE, ONNX_FILE, RunFolder

PREVIEW_CHARS = 40


@dataclass(frozen=True)
class RunInfo:
    path: str
    model: dict[str, Any]
    parameters: int | None
    vocab_size: int
    vocab_preview: str
    corpus: dict[str, Any]
    items: dict[str, Any] = field(default_factory=dict)  # kind and counts, for a run on items
    init_from: dict[str, Any] = field(default_factory=dict)  # the run a fine-tune started from
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    last_train_loss: float | None = None
    best_val_loss: float | None = None
    best_val_step: int | None = None
    stopped: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(folder: RunFolder) -> int | None:
    """The number of weights in model.safetensors, from its header alone."""
    from safetensors import safe_open

    path = folder.path / MODEL_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            total = 0
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                count = 1
                for size in f.get_slice(name).get_shape():
                    count *= size
                total += count
            return total
    except Exception as error:  # safetensors raises its own error type for a damaged header
        raise CharRNNError(f"{path} is not a readable safetensors file ({error})") from None


def _visible(ch: str) -> str:
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␠"}
    return named.get(ch) or (ch if ch.isprintable() else f"\\u{ord(ch):04x}")


def preview_vocab(chars: list[str], limit: int = PREVIEW_CHARS) -> str:
    """The first characters of the vocabulary, on one line (space as ␠, newline as \\n)."""
    more = f" … (+{len(chars) - limit} more)" if len(chars) > limit else ""
    return "".join(_visible(ch) for ch in chars[:limit]) + more


def describe_run(run: str | os.PathLike) -> RunInfo:
    folder = RunFolder(run)
    saved = folder.read_config()
    vocab = list(saved["vocab"])
    steps = epochs = 0
    seconds = 0.0
    last_train = best_val = best_step = stopped = None
    for record in folder.read_metrics():
        kind = record.get("kind")
        steps = max(steps, int(record.get("step", 0)))
        epochs = max(epochs, int(record.get("epoch", 0)))
        seconds = max(seconds, float(record.get("time", 0.0)))
        if kind == "train" and "loss" in record:
            last_train = float(record["loss"])
        elif kind == "val" and "val_loss" in record and (best_val is None or record["val_loss"] < best_val):
            best_val, best_step = float(record["val_loss"]), int(record["step"])
        elif kind == "stop":
            stopped = record.get("reason")
    files = [
        name for name in (MODEL_FILE, BEST_FILE, ONNX_FILE, CURVES_FILE) if (folder.path / name).is_file()
    ]
    return RunInfo(
        path=str(folder.path),
        model=dict(saved["model"]),
        parameters=count_parameters(folder),
        vocab_size=len(vocab),
        vocab_preview=preview_vocab(vocab),
        corpus=dict(saved.get("corpus", {})),
        items=dict(saved.get("items") or {}),
        init_from=dict(saved.get("init_from") or {}),
        steps=steps,
        epochs=epochs,
        seconds=seconds,
        last_train_loss=last_train,
        best_val_loss=best_val,
        best_val_step=best_step,
        stopped=stopped,
        checkpoints=[path.name for path in folder.complete_checkpoints()],
        files=files,
    )
