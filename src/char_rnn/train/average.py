"""An exponential moving average of the weights, for validation and the best checkpoint.

Late in training Adam keeps the weights moving around a minimum; their average over the
last few hundred steps lies nearer its centre and predicts held-out text better than the
weights of any one step. Training itself goes on with the raw weights.

The average starts as a copy of the model. Its decay grows with the step, (1 + step) /
(10 + step) capped at `decay`, so that the random weights of the first steps are soon
forgotten instead of lingering in the average.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    def tensors(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step number `step` (counted from 1)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for mine, current in zip(self.tensors(), model.parameters(), strict=True):
            mine.lerp_(current.detach(), 1.0 - decay)

    @torch.no_grad()
    def load(self, tensors: list[torch.Tensor]) -> None:
        for mine, saved in zip(self.tensors(), tensors, strict=True):
            if mine.shape != saved.shape:
                shapes = f"{tuple(saved.shape)}, expected {tuple(mine.shape)}"
                raise ValueError(f"an averaged weight of shape {shapes}")
            mine.copy_(saved)
