"""Loss of a model on a text: nats and bits per character, perplexity.

`evaluate_corpus` reads one split of a corpus (data/corpus.py) through its memory map,
as training does; `evaluate` and `evaluate_windows` take any ids that slice like an array.

The text is read with the state carried from character to character. To use the
whole batch width of the hardware, it is cut into S contiguous streams that are
read side by side; only the first few characters of each stream lack context, and
every character after the first is predicted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.corpus import Corpus
from .device import autocast
from .errors import CharRNNError, UsageError
from .model.network import CharRNNModel


@dataclass(frozen=True)
class EvalResult:
    loss: float  # nats per character
    chars: int  # number of predicted characters

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "bpc": self.bpc,
            "perplexity": self.perplexity,
            "chars": self.chars,
        }


def stream_chunks(
    ids: np.ndarray, n_streams: int, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Inputs, targets and a mask, each (S, <=chunk), chunk after chunk: the N-1 predictions
    split into S contiguous rows. Each chunk is sliced from `ids` as it is needed, so a
    memory-mapped text is never copied whole."""
    n_targets = len(ids) - 1
    n_streams = max(1, min(n_streams, n_targets))
    length = math.ceil(n_targets / n_streams)
    for start in range(0, length, chunk):
        width = min(chunk, length - start)
        inputs = np.zeros((n_streams, width), dtype=np.int64)
        targets = np.zeros((n_streams, width), dtype=np.int64)
        mask = np.zeros((n_streams, width), dtype=bool)
        for s in range(n_streams):
            lo = s * length + start
            hi = min(lo + width, (s + 1) * length, n_targets)
            if lo >= hi:
                continue
            inputs[s, : hi - lo] = ids[lo:hi]
            targets[s, : hi - lo] = ids[lo + 1 : hi + 1]
            mask[s, : hi - lo] = True
        yield torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask)


def whole_streams(ids: np.ndarray, n_streams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same layout as `stream_chunks`, in one piece (S, L)."""
    return next(stream_chunks(ids, n_streams, chunk=len(ids)))


@torch.no_grad()
def evaluate(
    model: CharRNNModel,
    ids: np.ndarray,
    *,
    streams: int = 16,
    chunk: int = 256,
    dtype: torch.dtype = torch.float32,
) -> EvalResult:
    """Mean cross-entropy over every next-character prediction in `ids`."""
    if len(ids) < 2:
        raise ValueError("evaluation needs at least two characters")
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for inputs, targets, mask in stream_chunks(ids, streams, chunk):
        x, y, m = inputs.to(device), targets.to(device), mask.to(device)
        with autocast(device, dtype):
            logits, state = model(x, state)
        losses = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (S, T)
        total += float(losses[m].sum())
        count += int(m.sum())
    model.train(was_training)
    return EvalResult(loss=total / count, chars=count)


@torch.no_grad()
def evaluate_windows(
    model: CharRNNModel,
    ids: np.ndarray,
    *,
    window: int = 256,
    batch: int = 64,
    dtype: torch.dtype = torch.float32,
) -> EvalResult:
    """Mean loss over independent windows, each read from a zero state (the protocol
    transformer baselines such as nanoGPT report)."""
    n_windows = (len(ids) - 1) // window
    if n_windows < 1:
        raise ValueError(f"the text is shorter than one window of {window + 1} characters")
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    total = 0.0
    for first in range(0, n_windows, batch):
        rows = min(batch, n_windows - first)
        # Sliced batch by batch, so a memory-mapped text is never copied whole.
        piece = torch.from_numpy(
            np.asarray(ids[first * window : (first + rows) * window + 1], dtype=np.int64)
        )
        x = piece[:-1].view(rows, window).to(device)
        y = piece[1:].view(rows, window).to(device)
        with autocast(device, dtype):
            logits, _ = model(x)
        total += float(F.cross_entropy(logits.float().transpose(1, 2), y, reduction="sum"))
    model.train(was_training)
    chars = n_windows * window
    return EvalResult(loss=total / chars, chars=chars)


@dataclass(frozen=True)
class CorpusEval:
    """A model's loss on one split of a corpus: with the state carried through the whole
    text and, when a window was asked for, over independent windows of that size."""

    source: str
    split: str
    carried: EvalResult
    window: int = 0
    windows: EvalResult | None = None

    @property
    def what(self) -> str:
        return f"{self.split} text of {self.source}"

    @property
    def loss(self) -> float:
        return self.carried.loss

    @property
    def bpc(self) -> float:
        return self.carried.bpc

    @property
    def perplexity(self) -> float:
        return self.carried.perplexity

    @property
    def chars(self) -> int:
        return self.carried.chars

    def as_dict(self) -> dict[str, float | int]:
        figures = self.carried.as_dict()
        if self.windows is not None:
            figures[f"window_{self.window}_loss"] = self.windows.loss
        return figures


def evaluate_corpus(
    model: CharRNNModel,
    corpus: Corpus,
    *,
    split: str,
    val_fraction: float,
    window: int = 0,
    streams: int = 16,
) -> CorpusEval:
    """The loss on `corpus.part(split, val_fraction)`, the same split training makes; also
    over independent windows of `window` characters unless it is 0."""
    if window < 0:
        raise UsageError(f"window must be a positive number of characters (0: none), got {window}")
    ids = corpus.part(split, val_fraction)
    what = f"{split} text of {corpus.source}"
    if len(ids) < 2:
        raise CharRNNError(f"{what} needs at least two characters")
    carried = evaluate(model, ids, streams=streams)
    windows = None
    if window:
        if len(ids) <= window:
            raise CharRNNError(f"{what} is shorter than one window of {window + 1} characters")
        windows = evaluate_windows(model, ids, window=window)
    return CorpusEval(corpus.source, split, carried, window, windows)


@torch.no_grad()
def evaluate_steps(
    step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]], ids: np.ndarray, *, streams: int = 16
) -> EvalResult:
    """Mean cross-entropy over `ids` laid out as `evaluate` lays them out, read one position
    at a time through `step(ids (S, 1), state) -> (logits (S, V), state)`, state None at
    first: the loss of a generation engine's own step (the fast engine's int8 weights, say)
    on exactly the predictions `evaluate` scores for the model."""
    if len(ids) < 2:
        raise ValueError("evaluation needs at least two characters")
    inputs, targets, mask = (a.t().contiguous() for a in whole_streams(ids, streams))  # (L, S)
    losses = torch.empty(inputs.shape, dtype=torch.float32)
    state = None
    for t in range(inputs.shape[0]):
        logits, state = step(inputs[t].unsqueeze(1), state)
        losses[t] = F.cross_entropy(logits.float(), targets[t], reduction="none")
    return EvalResult(loss=float(losses[mask].sum() / mask.sum()), chars=int(mask.sum()))
