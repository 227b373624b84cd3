"""TensorBoard logs of a training run (`--tensorboard DIR`; the tensorboard extra).

What metrics.jsonl records goes to TensorBoard as well, under these tags, against the step:

    loss/train, bits_per_char/train        the mean over each logging window (log_every)
    loss/validation, bits_per_char/validation
    learning_rate, chars_per_s             at each logging window
    sample                                 a short text drawn at each validation

The sample is drawn by the reference engine with a generator of its own, from the weights
that validation measured, so the training's random state and its results do not change.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..errors import require_extra
from ..generate import generate_texts
from ..generate.reference import ReferenceEngine

SAMPLE_LENGTH = 200
SAMPLE_TEMPERATURE = 0.8
# metrics.jsonl's figure -> the TensorBoard tag it is written under.
TAGS = {
    "train": {"loss": "loss/train", "lr": "learning_rate", "chars_per_s": "chars_per_s"},
    "val": {"val_loss": "loss/validation"},
}
BITS = {"loss/train": "bits_per_char/train", "loss/validation": "bits_per_char/validation"}


class Board:
    """A TensorBoard event writer for one invocation; with no folder it writes nothing."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.writer: Any = None
        if folder is not None:
            # Checked before the run starts, so a missing extra costs no training.
            require_extra("tensorboard", "tensorboard", "--tensorboard")

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def _writer(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.folder)
        return self.writer

    def add(self, record: dict[str, Any]) -> None:
        """Write the figures of one metrics.jsonl record."""
        if self.folder is None:
            return
        for key, tag in TAGS.get(record["kind"], {}).items():
            value = record.get(key)
            if value is None or not math.isfinite(value):
                continue
            self._writer().add_scalar(tag, value, record["step"])
            if tag in BITS:
                self._writer().add_scalar(BITS[tag], value / math.log(2), record["step"])
        self._writer().flush()

    def add_sample(self, model: torch.nn.Module, vocab: Vocab, step: int, seed: int) -> None:
        if self.folder is None:
            return
        start = "\n" if "\n" in vocab.chars else vocab.chars[0]
        was_training = model.training
        try:
            config = SampleConfig(
                start=start, length=SAMPLE_LENGTH, temperature=SAMPLE_TEMPERATURE, seed=seed
            )
            text = generate_texts(ReferenceEngine(model, vocab), config)[0]
        finally:
            model.train(was_training)
        # TensorBoard reads text as Markdown: a fenced block keeps the line breaks and spaces.
        self._writer().add_text("sample", f"```\n{text}\n```", step)
        self._writer().flush()


def open_board(folder: str | None) -> Board:
    return Board(folder)
