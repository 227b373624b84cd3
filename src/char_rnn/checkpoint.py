"""The run folder: saved atomically, loaded without pickle.

Layout of a run folder:
    config.json                 model config, vocabulary, training config, corpus hash, versions
    model.safetensors           the newest weights (fp32, device-free)
    best.safetensors            the weights with the lowest validation loss so far
    metrics.jsonl               every logged figure, one JSON object a line
    checkpoints/step-NNNNNNNNN/ one resumable checkpoint:
        model.safetensors       weights
        trainer.safetensors     optimizer tensors, hidden state, RNG state; the
                                counters (step, epoch, batch) as JSON metadata
        manifest.json           written last: the files' sha256s. A checkpoint
                                without a valid manifest is incomplete and ignored.

Every file is written to a temporary name in its folder, flushed, fsynced and
renamed, then the folder is fsynced: a crash leaves the old file or the new one,
never half of one. Nothing here unpickles: weights and tensors are safetensors,
everything else is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import CharRNNError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
TRAINER_FILE = "trainer.safetensors"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
# A config.json is a few kilobytes even with a large vocabulary; refuse anything absurd.
MAX_JSON_BYTES = 64 << 20


# ---- atomic writes ----------------------------------------------------------------


def _file_mode() -> int:
    # mkstemp creates files 0600; a checkpoint should get the usual mode under the umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    write_atomic_with(path, lambda f: f.write(data))


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` with what `write(file)` writes: temporary name, fsync, rename, fsync."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- safe reads --------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CharRNNError(f"{what} {path} is {size} bytes, far too large to be genuine")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CharRNNError(f"{what} {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CharRNNError(f"{what} {path} is not valid JSON ({error})") from None
    except RecursionError:
        raise CharRNNError(f"{what} {path} is not valid JSON (nested too deeply)") from None
    except OSError as error:
        raise CharRNNError(f"cannot read {what} {path}: {error.strerror}") from None


def read_tensors(path: Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (pickles included) is refused, never run."""
    if not path.is_file():
        raise CharRNNError(f"{what} {path} is missing")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CharRNNError(
            f"{what} {path} is not a readable safetensors file ({_first_line(error)})"
        ) from None


def read_tensors_with_metadata(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = read_tensors(path, what)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CharRNNError(
            f"{what} {path} is not a readable safetensors file ({_first_line(error)})"
        ) from None
    return tensors, metadata


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ---- weights -----------------------------------------------------------------------


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
            "Lower --lr or --grad-clip and resume from the last checkpoint"
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
        raise CharRNNError(f"trainer state {path} is incomplete or damaged ({_first_line(error)})") from None
    return TrainerState(counters=counters, optimizer=optimizer, rng=rng, hidden=hidden, averaged=averaged)


def _numbered(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    """tensors["<prefix>.0"], tensors["<prefix>.1"], ... (KeyError where one is missing)."""
    return [tensors[f"{prefix}.{i}"] for i in range(sum(k.startswith(f"{prefix}.") for k in tensors))]


class RunFolder:
    """Reads and writes one training run's folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def has_run(self) -> bool:
        return self.config_path.exists() or self.checkpoints.exists()

    def prepare_new(self) -> None:
        """Create the folder for a fresh run, refusing to touch an existing one."""
        if self.path.exists() and not self.path.is_dir():
            raise CharRNNError(f"--out {self.path} exists and is not a folder")
        if self.has_run():
            raise CharRNNError(
                f"{self.path} already holds a run; pass --resume to continue it, or choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise CharRNNError(f"cannot write to {self.path}: {error.strerror}") from None

    # config ------------------------------------------------------------------------

    def write_config(self, payload: dict[str, Any]) -> None:
        write_json(self.config_path, {"format_version": FORMAT_VERSION, **payload})

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise CharRNNError(f"run folder {self.path} does not exist")
        config = read_json(self.config_path, "run config")
        if not isinstance(config, dict):
            raise CharRNNError(f"run config {self.config_path} is not a JSON object")
        version = config.get("format_version")
        if not isinstance(version, int):
            raise CharRNNError(f"run config {self.config_path} has no format_version")
        if version > FORMAT_VERSION:
            raise CharRNNError(
                f"{self.config_path} was written by a newer char-rnn (format {version}, this "
                f"one reads up to {FORMAT_VERSION}); upgrade char-rnn"
            )
        for key, kind in (("model", dict), ("vocab", list), ("train", dict)):
            if not isinstance(config.get(key), kind):
                raise CharRNNError(f"run config {self.config_path} lacks a valid '{key}'")
        return config

    # checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, model: torch.nn.Module, trainer: TrainerState, keep_last: int = 3) -> Path:
        """Commit a resumable checkpoint, then refresh model.safetensors and prune old ones."""
        check_finite(model, "the checkpoint")
        step = int(trainer.counters["step"])
        folder = self.checkpoints / f"step-{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        files = {MODEL_FILE: weights_bytes(model), TRAINER_FILE: trainer_bytes(trainer)}
        for name, data in files.items():
            write_atomic(folder / name, data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": {name: sha256_bytes(data) for name, data in files.items()},
        }
        write_json(folder / MANIFEST_FILE, manifest)  # the commit marker
        fsync_dir(self.checkpoints)
        write_atomic(self.path / MODEL_FILE, files[MODEL_FILE])
        self.prune(keep_last)
        return folder

    def save_best(self, model: torch.nn.Module) -> None:
        check_finite(model, BEST_FILE)
        write_atomic(self.path / BEST_FILE, weights_bytes(model))

    def complete_checkpoints(self) -> Iterator[Path]:
        """Committed checkpoints, newest first."""
        if not self.checkpoints.is_dir():
            return
        for folder in sorted(self.checkpoints.glob("step-*"), reverse=True):
            if self.is_complete(folder):
                yield folder

    def is_complete(self, folder: Path) -> bool:
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            return all(
                sha256_bytes((folder / name).read_bytes()) == digest
                for name, digest in manifest["files"].items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def latest_checkpoint(self) -> Path:
        newest = next(self.complete_checkpoints(), None)
        if newest is None:
            raise CharRNNError(f"{self.path} holds no complete checkpoint to resume from")
        return newest

    def has_committed_checkpoint(self) -> bool:
        """Whether any checkpoint was ever committed (it may since have been damaged)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.glob(f"step-*/{MANIFEST_FILE}"))

    def prune(self, keep_last: int) -> None:
        """Remove all but the newest `keep_last` complete checkpoints (never the newest).

        A folder is first renamed out of the `step-*` namespace, atomically, and only then
        deleted: a crash in the middle of the deletion leaves a hidden folder that the next
        prune finishes removing, never a half-deleted checkpoint that looks like one."""
        for leftover in self.checkpoints.glob(".pruned-step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        complete = list(self.complete_checkpoints())
        for folder in complete[max(keep_last, 1) :]:
            hidden = folder.with_name(f".pruned-{folder.name}-{os.urandom(4).hex()}")
            os.replace(folder, hidden)
            fsync_dir(self.checkpoints)
            shutil.rmtree(hidden, ignore_errors=True)

    def clean_after_crash(self, newest: Path | None, keep_last: int) -> None:
        """Finish what a killed writer left: remove temporary files, make model.safetensors
        the newest committed weights and prune to `keep_last` (a crash can fall between a
        commit and its refresh or its prune, and a resumed run may have no step left)."""
        folders = [self.path, *(self.checkpoints.glob("step-*") if self.checkpoints.is_dir() else [])]
        for folder in folders:
            for temporary in folder.glob(".*.tmp"):
                temporary.unlink(missing_ok=True)
        if newest is not None:
            weights = (newest / MODEL_FILE).read_bytes()
            current = self.path / MODEL_FILE
            if not current.is_file() or current.read_bytes() != weights:
                write_atomic(current, weights)
        self.prune(keep_last)

    def weights_path(self, which: str = "latest") -> Path:
        name = {"latest": MODEL_FILE, "best": BEST_FILE}.get(which)
        if name is None:
            raise CharRNNError(f"unknown checkpoint {which!r}; use latest or best")
        path = self.path / name
        if not path.is_file():
            raise CharRNNError(f"{path} is missing: this run has no {which} weights yet")
        return path

    # metrics -----------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return records
