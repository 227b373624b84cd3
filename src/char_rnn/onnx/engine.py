"""The ONNX engine: generation with onnxruntime from the file `char-rnn export` writes.

Its step is the exported graph (ids and state in, logits and state out); around it runs
the reference engine's sampling loop (generate/sampling.py), so both draw the same text
from the same logits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig, SampleConfig
from ..data.vocab import Vocab
from ..errors import CharRNNError, require_extra
from ..generate.sampling import sample_stream
from ..run.folder import ONNX_FILE, RunFolder
from ..run.storage import sha256_file
from .export import CHECKPOINT_KEY, WEIGHTS_SHA256_KEY, state_names


class OnnxEngine:
    """A run's exported model in an onnxruntime session, with its vocabulary."""

    name = "onnx"

    def __init__(self, session: Any, vocab: Vocab, config: ModelConfig):
        self.session = session
        self.vocab = vocab
        self.config = config
        self.state_names = state_names(config.cell)

    @classmethod
    def load(
        cls,
        run: str | os.PathLike,
        vocab: Vocab,
        config: ModelConfig,
        *,
        which: str = "latest",
        path: str | os.PathLike | None = None,
    ) -> OnnxEngine:
        """Open RUN/model.onnx (or `path`), refusing it when it was exported from other weights
        than `which`; `vocab` and `config` are the run's, as its folder gives them."""
        onnxruntime = require_extra("onnx", "onnxruntime", "the onnx engine (--engine onnx)")

        folder = RunFolder(run)
        path = Path(path) if path is not None else folder.path / ONNX_FILE
        if not path.is_file():
            raise CharRNNError(
                f"{path} is missing; write it with: char-rnn export {folder.path} --format onnx"
            )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: the runtime's notices are not the user's business
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own unexported exception types
            raise CharRNNError(f"{path} is not a readable ONNX model ({str(error)[:200]})") from None
        metadata = session.get_modelmeta().custom_metadata_map
        weights = folder.weights_path(which)
        if metadata.get(WEIGHTS_SHA256_KEY) != sha256_file(weights):
            exported = metadata.get(CHECKPOINT_KEY, "unknown")
            raise CharRNNError(
                f"{path} was exported from other weights (checkpoint {exported}) than {weights}; "
                f"export again: char-rnn export {folder.path} --checkpoint {which}"
            )
        return cls(session, vocab, config)

    def stream(self, config: SampleConfig) -> Iterator[list[str]]:
        return sample_stream(self._step, self.vocab, config)

    def _step(
        self, ids: torch.Tensor, state: list[np.ndarray] | None
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        if state is None:
            shape = (self.config.layers, ids.shape[0], self.config.units)
            state = [np.zeros(shape, dtype=np.float32) for _ in self.state_names]
        feed = {"ids": np.ascontiguousarray(ids.numpy(), dtype=np.int64)}
        feed.update(zip(self.state_names, state, strict=True))
        logits, *new_state = self.session.run(None, feed)  # logits (B, V) of the last position
        return torch.from_numpy(logits), new_state
