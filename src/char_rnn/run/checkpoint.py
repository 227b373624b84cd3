"""What a checkpoint holds besides the run folder's layout: the weights as safetensors
bytes, and the trainer state (optimizer tensors, RNG, hidden state, averaged weights, the
training counters as JSON metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from ..errors import CharRNNError
from .storage import first_line, read_tensors, read_tensors_with_metadata

FORMAT_VERSION = 1


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's weights as safetensors bytes: fp32, on the CPU, contiguous."""
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous() for name, t in model.state_dict().items()
    }
    return save(tensors, metadata={"format_version": str(FORMAT_VERSION)})


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse to save weights holding NaN or infinity: a checkpoint must stay usable."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise CharRNNError(
            f"the weights are no longer finite ({', '.join(bad[:3])}); {what} was not written. "
            "Lower lr or grad_clip and resume from the last checkpoint"
        )


def load_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = read_tensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CharRNNError(
            f"{path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CharRNNError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)


# ---- run folder ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerState:
    """Everything besides the weights that an exact resume needs."""

    counters: dict[str, Any]  # step, epoch, batch, best_val_loss, elapsed, ...
    optimizer: dict[str, Any]  # torch optimizer state_dict
    rng: torch.Tensor  # torch's CPU generator state
    hidden: list[torch.Tensor]  # the carried RNN state (empty when there is none)
    averaged: list[torch.Tensor] = field(default_factory=list)  # ema.py's weights, or none


def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, slots in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def trainer_bytes(trainer: TrainerState) -> bytes:
    tensors, optimizer_meta = optimizer_to_tensors(trainer.optimizer)
    tensors["rng.torch"] = trainer.rng.contiguous()
    for i, h in enumerate(trainer.hidden):
        tensors[f"hidden.{i}"] = h.detach().to("cpu", torch.float32).contiguous()
    for i, w in enumerate(trainer.averaged):
        tensors[f"averaged.{i}"] = w.detach().cpu().contiguous()
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "counters": json.dumps(trainer.counters),
        "optimizer": json.dumps(optimizer_meta),
    }
    return save(tensors, metadata=metadata)


def parse_trainer(path: Path) -> TrainerState:
    tensors, metadata = read_tensors_with_metadata(path, "trainer state")
    try:
        counters = json.loads(metadata["counters"])
        optimizer_meta = json.loads(metadata["optimizer"])
        rng = tensors["rng.torch"]
        if not isinstance(counters, dict) or not isinstance(counters.get("step"), int):
            raise ValueError("the counters hold no step")
        if rng.dtype != torch.uint8 or rng.dim() != 1:
            raise ValueError("the RNG state is not a byte vector")
        hidden = _numbered(tensors, "hidden")
        averaged = _numbered(tensors, "averaged")
        optimizer = optimizer_from_tensors(tensors, optimizer_meta)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise CharRNNError(f"trainer state {path} is incomplete or damaged ({first_line(error)})") from None
    return TrainerState(counters=counters, optimizer=optimizer, rng=rng, hidden=hidden, averaged=averaged)


def _numbered(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    """tensors["<prefix>.0"], tensors["<prefix>.1"], ... (KeyError where one is missing)."""
    return [tensors[f"{prefix}.{i}"] for i in range(sum(k.startswith(f"{prefix}.") for k in tensors))]
