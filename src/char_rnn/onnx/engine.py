"""Generation with onnxruntime from the file `char-rnn export` writes.

The same loop as sample.py: prime the state with the whole start string, then feed
back one sampled id at a time. Sampling itself is sample.py's `sample_next`, applied
to the runtime's logits, so both engines draw the same text from the same logits.
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
from ..errors import CharRNNError
from ..generate.sampling import make_generator, sample_next
from ..run.folder import ONNX_FILE, RunFolder
from ..run.storage import sha256_file
from .export import CHECKPOINT_KEY, WEIGHTS_SHA256_KEY, state_names


class OnnxEngine:
    """A run's exported model in an onnxruntime session, with its vocabulary."""

    def __init__(self, session: Any, vocab: Vocab, config: ModelConfig):
        self.session = session
        self.vocab = vocab
        self.config = config
        self.state_names = state_names(config.cell)

    @classmethod
    def load(cls, run: str | os.PathLike, *, which: str = "latest", path: str | os.PathLike | None = None):
        """Open RUN/model.onnx, refusing it when it was exported from other weights than `which`."""
        import onnxruntime

        folder = RunFolder(run)
        saved = folder.open()
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
        return cls(session, saved.vocab, saved.model)

    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        shape = (self.config.layers, batch_size, self.config.units)
        return [np.zeros(shape, dtype=np.float32) for _ in self.state_names]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """ids (B, T) -> logits (B, V) of the last position, and the new state."""
        feed = {"ids": ids.astype(np.int64, copy=False), **dict(zip(self.state_names, state, strict=True))}
        logits, *new_state = self.session.run(None, feed)
        return logits, new_state

    def stream(self, start: str = "\n", **options: Any) -> Iterator[list[str]]:
        """Yield each step's next character for every sample, as CharRNN.stream does."""
        config = SampleConfig(start=start, **options)
        self.vocab.check(config.start, "the start string")
        return self._stream(config)

    def _stream(self, config: SampleConfig) -> Iterator[list[str]]:
        if config.length == 0:
            return
        generator = make_generator(config.seed)
        start = self.vocab.encode(config.start).astype(np.int64)
        ids = np.broadcast_to(start, (config.num_samples, len(start)))  # (B, T)
        logits, state = self.step(ids, self.initial_state(config.num_samples))
        chars = self.vocab.chars
        for _ in range(config.length):
            next_ids = sample_next(
                torch.from_numpy(logits),
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
                generator=generator,
            )
            yield [chars[i] for i in next_ids.tolist()]
            logits, state = self.step(next_ids.numpy().reshape(-1, 1), state)

    def generate(self, start: str = "\n", length: int = 1000, **options: Any) -> str | list[str]:
        """The start string plus `length` generated characters; a list when num_samples > 1."""
        config = SampleConfig(start=start, length=length, **options)
        texts = [[config.start] for _ in range(config.num_samples)]
        for step in self.stream(start, length=length, **options):
            for text, ch in zip(texts, step, strict=True):
                text.append(ch)
        joined = ["".join(t) for t in texts]
        return joined if config.num_samples > 1 else joined[0]
