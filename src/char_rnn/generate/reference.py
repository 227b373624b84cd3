"""The reference engine: `model.forward` once per character, on the model's device.

The plainest way to generate, and the one the others are checked against: its step is
the model itself, driven by the sampling loop that the ONNX engine shares.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..model.network import CharRNNModel, State
from .sampling import sample_stream


class ReferenceEngine:
    name = "reference"

    def __init__(self, model: CharRNNModel, vocab: Vocab):
        self.model = model
        self.vocab = vocab

    def stream(self, config: SampleConfig) -> Iterator[list[str]]:
        self.model.eval()
        return sample_stream(self._step, self.vocab, config)

    @torch.no_grad()
    def _step(self, ids: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        logits, state = self.model(ids.to(self.model.head.weight.device), state)  # (B, T, V)
        return logits[:, -1].cpu(), state
