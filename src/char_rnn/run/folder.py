"""The run folder: every file a run writes, named here and nowhere else.

Layout of a run folder:
    config.json                 model config, vocabulary, training config, corpus hash, versions
    model.safetensors           the newest weights (fp32, device-free)
    best.safetensors            the weights with the lowest validation loss so far
    metrics.jsonl               every logged figure, one JSON object a line
    curves.png                  the training curves (`char-rnn plot`, and at the end of training)
    model.onnx                  the ONNX export (`char-rnn export`)
    novelty/                    the training text's suffix array (`generate --novelty`)
    web/                        the static page (`char-rnn export --format web`)
    checkpoints/step-NNNNNNNNN/ one resumable checkpoint:
        model.safetensors       weights
        trainer.safetensors     optimizer tensors, hidden state, RNG state; the
                                training state (step, epoch, batch, ...) as JSON metadata
        manifest.json           written last: the files' sha256s. A checkpoint
                                without a valid manifest is incomplete and ignored.

Every write is atomic (storage.py) and goes through one gate: a folder opened read-only
(as every process but rank 0 of a distributed run opens it) writes nothing, whatever
method is called. Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, from_dict
from ..data.vocab import Vocab
from ..errors import CharRNNError
from .checkpoint import FORMAT_VERSION, TrainerState, check_finite, trainer_bytes, weights_bytes
from .storage import fsync_dir, read_json, sha256_bytes, write_atomic, write_json

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
ONNX_FILE = "model.onnx"
NOVELTY_DIR = "novelty"
WEB_DIR = "web"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_FILE = "trainer.safetensors"
MANIFEST_FILE = "manifest.json"
WEIGHTS = {"latest": MODEL_FILE, "best": BEST_FILE}


@dataclass(frozen=True)
class SavedRun:
    """What config.json says about a run, validated once."""

    model: ModelConfig
    vocab: Vocab
    train: dict[str, Any]  # the training options it was last run with
    corpus: dict[str, Any]  # sha256, source, chars
    payload: dict[str, Any]  # the whole file, for what only some readers need


class RunFolder:
    """Reads and writes one training run's folder; `writable=False` writes nothing."""

    def __init__(self, path: str | os.PathLike, *, writable: bool = True):
        self.path = Path(path)
        self.writable = writable

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def has_run(self) -> bool:
        return self.config_path.exists() or self.checkpoints.exists()

    # the write gate ---------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        if self.writable:
            write_atomic(path, data)

    def _write_json(self, path: Path, payload: Any) -> None:
        if self.writable:
            write_json(path, payload)

    def _remove(self, path: Path) -> None:
        if not self.writable:
            return
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def prepare_new(self) -> None:
        """Create the folder for a fresh run, refusing to touch an existing one."""
        if self.path.exists() and not self.path.is_dir():
            raise CharRNNError(f"the run folder {self.path} exists and is not a folder")
        if self.has_run():
            raise CharRNNError(
                f"{self.path} already holds a run; resume it (--resume, resume=True) or choose "
                "another run folder"
            )
        if not self.writable:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise CharRNNError(f"cannot write to {self.path}: {error.strerror}") from None

    # config -----------------------------------------------------------------------------

    def write_config(self, payload: dict[str, Any]) -> None:
        self._write_json(self.config_path, {"format_version": FORMAT_VERSION, **payload})

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

    def open(self) -> SavedRun:
        """The run's model config and vocabulary, checked against each other."""
        payload = self.read_config()
        vocab = Vocab.from_json(payload["vocab"])
        try:
            model = from_dict(ModelConfig, payload["model"])
        except (TypeError, ValueError) as error:
            raise CharRNNError(f"{self.config_path} has an invalid model config: {error}") from None
        if model.vocab_size != len(vocab):
            raise CharRNNError(
                f"{self.config_path}: vocab_size {model.vocab_size} does not match the "
                f"{len(vocab)}-character vocabulary"
            )
        corpus = payload.get("corpus")
        return SavedRun(model, vocab, payload["train"], corpus if isinstance(corpus, dict) else {}, payload)

    # weights ----------------------------------------------------------------------------

    def weights_path(self, which: str = "latest") -> Path:
        name = WEIGHTS.get(which)
        if name is None:
            raise CharRNNError(f"unknown checkpoint {which!r}; use {' or '.join(WEIGHTS)}")
        path = self.path / name
        if not path.is_file():
            raise CharRNNError(f"{path} is missing: this run has no {which} weights yet")
        return path

    def save_best(self, model: torch.nn.Module) -> None:
        check_finite(model, BEST_FILE)
        self._write(self.path / BEST_FILE, weights_bytes(model))

    # checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, model: torch.nn.Module, trainer: TrainerState, keep_last: int = 3) -> Path:
        """Commit a resumable checkpoint, then refresh model.safetensors and prune old ones."""
        check_finite(model, "the checkpoint")
        step = int(trainer.counters["step"])
        folder = self.checkpoints / f"step-{step:09d}"
        files = {MODEL_FILE: weights_bytes(model), TRAINER_FILE: trainer_bytes(trainer)}
        if not self.writable:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            self._write(folder / name, data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": {name: sha256_bytes(data) for name, data in files.items()},
        }
        self._write_json(folder / MANIFEST_FILE, manifest)  # the commit marker
        fsync_dir(self.checkpoints)
        self._write(self.path / MODEL_FILE, files[MODEL_FILE])
        self.prune(keep_last)
        return folder

    def complete_checkpoints(self) -> list[Path]:
        """Committed checkpoints, newest first (every file's sha256 checked once)."""
        if not self.checkpoints.is_dir():
            return []
        return [f for f in sorted(self.checkpoints.glob("step-*"), reverse=True) if self.is_complete(f)]

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
        newest = self.newest_checkpoint()
        if newest is None:
            raise CharRNNError(f"{self.path} holds no complete checkpoint to resume from")
        return newest

    def newest_checkpoint(self) -> Path | None:
        """The newest committed checkpoint, checking no more folders than it must."""
        if not self.checkpoints.is_dir():
            return None
        return next(
            (f for f in sorted(self.checkpoints.glob("step-*"), reverse=True) if self.is_complete(f)), None
        )

    def has_committed_checkpoint(self) -> bool:
        """Whether any checkpoint was ever committed (it may since have been damaged)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.glob(f"step-*/{MANIFEST_FILE}"))

    def prune(self, keep_last: int, complete: list[Path] | None = None) -> None:
        """Remove all but the newest `keep_last` complete checkpoints (never the newest).

        A folder is first renamed out of the `step-*` namespace, atomically, and only then
        deleted: a crash in the middle of the deletion leaves a hidden folder that the next
        prune finishes removing, never a half-deleted checkpoint that looks like one."""
        if not self.writable:
            return
        for leftover in self.checkpoints.glob(".pruned-step-*"):
            self._remove(leftover)
        complete = self.complete_checkpoints() if complete is None else complete
        for folder in complete[max(keep_last, 1) :]:
            hidden = folder.with_name(f".pruned-{folder.name}-{os.urandom(4).hex()}")
            os.replace(folder, hidden)
            fsync_dir(self.checkpoints)
            self._remove(hidden)

    def clean_after_crash(self, keep_last: int) -> Path | None:
        """Finish what a killed writer left and return the newest committed checkpoint:
        remove temporary files, make model.safetensors the newest committed weights and
        prune to `keep_last` (a crash can fall between a commit and its refresh or its
        prune, and a resumed run may have no step left)."""
        complete = self.complete_checkpoints()
        newest = complete[0] if complete else None
        if not self.writable:
            return newest
        folders = [self.path, *(self.checkpoints.glob("step-*") if self.checkpoints.is_dir() else [])]
        for folder in folders:
            for temporary in folder.glob(".*.tmp"):
                self._remove(temporary)
        if newest is not None:
            weights = (newest / MODEL_FILE).read_bytes()
            current = self.path / MODEL_FILE
            if not current.is_file() or current.read_bytes() != weights:
                self._write(current, weights)
        self.prune(keep_last, complete)
        return newest

    # metrics ----------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.writable:
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

    def forget_metrics_after(self, step: int) -> None:
        """Drop what was logged after `step`: a resumed run logs those steps again."""
        path = self.path / METRICS_FILE
        if not self.writable or not path.is_file():
            return
        kept = [r for r in self.read_metrics() if isinstance(r.get("step"), int) and r["step"] <= step]
        self._write(path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))
