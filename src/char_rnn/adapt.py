"""Dynamic evaluation: a model that keeps learning from the text it is reading.

Krause et al., "Dynamic Evaluation of Neural Sequence Models" (2018), in the variant they
call RMS with a global prior. The text is read as one stream cut into segments of n
characters, the state carried from each segment to the next (detached: the gradient of a
segment stops at its first character). Segment k is scored with the weights as they are;
only then do the weights learn from it:

    theta <- theta - lr * g / (rms + floor) + decay_i * (theta0 - theta)

g is the gradient of segment k's mean loss, theta0 the trained weights, and rms the root
mean square of such gradients, each of one segment, measured with theta0 on the end of the
training text. decay_i = decay * rms_i / mean(rms), clipped at 1: the weights whose
gradients are large in training move the most, and are pulled back the hardest. No
character is scored by weights that have seen it.

One change from the paper: its epsilon in the denominator becomes `floor`, a fraction
(RMS_FLOOR) of the mean rms of the same tensor. The embedding row of a character that the
statistics text never shows has rms 0; an absolute epsilon small enough not to matter
elsewhere would turn the first gradient on that row into a huge step.

The model is never changed: adaptation works on a copy of its weights, so a run folder's
files and a loaded model stay as they were. There is nothing random in it: the same model,
text and config give the same figures.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import AdaptConfig
from .errors import CharRNNError
from .evaluate import EvalResult
from .model.network import CharRNNModel, State, detach_state
from .threads import using_threads

# The denominator's floor, as a fraction of the mean rms of each tensor (module docstring).
RMS_FLOOR = 0.1
# Adapting reads one stream a segment at a time: small operations, which one thread runs
# faster than two wherever another program takes a core; `threads` pins another count.
ONE_STREAM_THREADS = 1
# `continuation_start`: generation after an adapted text starts from at most this much of its end.
START_CHARS = 200


def segments(ids: np.ndarray, length: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs and targets (1, <=length) of each segment in turn: every one of the N-1
    next-character predictions of `ids` in exactly one segment, in text order."""
    for lo in range(0, len(ids) - 1, length):
        hi = min(lo + length, len(ids) - 1)
        piece = torch.from_numpy(np.asarray(ids[lo : hi + 1], dtype=np.int64))
        yield piece[None, :-1], piece[None, 1:]


def _segment_loss(model: CharRNNModel, x: torch.Tensor, y: torch.Tensor, state: State | None):
    device = model.head.weight.device
    logits, state = model(x.to(device), state)
    return F.cross_entropy(logits[0].float(), y[0].to(device)), state


@dataclass(frozen=True)
class GradientStats:
    """The root mean square of one segment's gradient, per parameter, over `segments`
    segments of training text read with the trained weights."""

    rms: dict[str, torch.Tensor]
    segments: int


def gradient_statistics(model: CharRNNModel, ids: np.ndarray, segment: int) -> GradientStats:
    """`GradientStats` of `model` over `ids` (training text) read in segments of `segment`."""
    if len(ids) < 2:
        raise CharRNNError("the gradient statistics need at least two characters of training text")
    names, params = zip(*model.named_parameters(), strict=True)
    squares = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()  # no dropout: the statistics describe the gradients adaptation will see
    count, state = 0, None
    try:
        for x, y in segments(ids, segment):
            loss, state = _segment_loss(model, x, y, state)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for square, grad in zip(squares, grads, strict=True):
                if grad is not None:
                    square.add_(grad.detach().square())
            state = detach_state(state)
            count += 1
    finally:
        model.train(was_training)
    return GradientStats({n: (s / count).sqrt() for n, s in zip(names, squares, strict=True)}, count)


@dataclass(frozen=True)
class AdaptedEval:
    """The loss of a text read with adaptation, and of the same text read the same way
    (one stream, the same segments) by the trained weights."""

    adapted: EvalResult
    static: EvalResult
    segment_nats: tuple[float, ...]  # the adapted loss summed over each segment, in order

    @property
    def loss(self) -> float:
        return self.adapted.loss

    @property
    def bpc(self) -> float:
        return self.adapted.bpc

    @property
    def perplexity(self) -> float:
        return self.adapted.perplexity

    @property
    def chars(self) -> int:
        return self.adapted.chars

    @property
    def gain(self) -> float:
        """How much lower the adapted loss is than the static one, as a fraction of it."""
        return 1.0 - self.adapted.loss / self.static.loss

    def as_dict(self) -> dict[str, float | int]:
        return {**self.adapted.as_dict(), "static_loss": self.static.loss, "static_bpc": self.static.bpc}


class AdaptiveReader:
    """A copy of a model's weights that learns from each segment after scoring it."""

    def __init__(self, model: CharRNNModel, stats: GradientStats, config: AdaptConfig):
        self.config = config
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(True)
        self.params = [p for _, p in self.model.named_parameters()]
        self.trained = [p.detach().clone() for p in self.params]
        rms = [stats.rms[name].to(p.device) for name, p in self.model.named_parameters()]
        mean_rms = sum(float(r.sum()) for r in rms) / max(sum(r.numel() for r in rms), 1)
        self.denominators = [r + RMS_FLOOR * (float(r.mean()) or mean_rms) for r in rms]
        self.decay_rates = [
            (config.adapt_decay * r / mean_rms).clamp(max=1.0)
            if mean_rms > 0
            else torch.full_like(r, config.adapt_decay)
            for r in rms
        ]
        self.state: State | None = None

    def read(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Score one segment (inputs and targets (1, T)) with the current weights, then learn
        from it; the loss summed over its T predictions, in nats."""
        loss, state = _segment_loss(self.model, x, y, self.state)
        scored = float(loss.detach()) * y.shape[1]  # before any weight moves
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        with torch.no_grad():
            lr = self.config.adapt_lr
            for p, p0, g, denominator, rate in zip(
                self.params, self.trained, grads, self.denominators, self.decay_rates, strict=True
            ):
                pull = rate * (p0 - p)
                if g is not None:
                    p.addcdiv_(g, denominator, value=-lr)
                p.add_(pull)
        self.state = detach_state(state)
        return scored


def evaluate_adapted(
    model: CharRNNModel, ids: np.ndarray, stats: GradientStats, config: AdaptConfig
) -> AdaptedEval:
    """Read `ids` with adaptation (the module docstring) and, beside it, with the trained
    weights alone; `model` is left as it was."""
    if len(ids) < 2:
        raise CharRNNError("evaluation needs at least two characters")
    reader = AdaptiveReader(model, stats, config)
    was_training = model.training
    model.eval()
    static_nats, static_state = 0.0, None
    segment_nats: list[float] = []
    try:
        for x, y in segments(ids, config.adapt_segment):
            with torch.no_grad():
                loss, static_state = _segment_loss(model, x, y, static_state)
            static_nats += float(loss) * y.shape[1]
            segment_nats.append(reader.read(x, y))
    finally:
        model.train(was_training)
    chars = len(ids) - 1
    return AdaptedEval(
        adapted=EvalResult(loss=math.fsum(segment_nats) / chars, chars=chars),
        static=EvalResult(loss=static_nats / chars, chars=chars),
        segment_nats=tuple(segment_nats),
    )


def adapted_model(
    model: CharRNNModel, ids: np.ndarray, stats: GradientStats, config: AdaptConfig
) -> CharRNNModel:
    """A copy of `model` whose weights have read `ids` with adaptation; `model` is untouched."""
    if len(ids) < 2:
        raise CharRNNError("the text to adapt to needs at least two characters")
    reader = AdaptiveReader(model, stats, config)
    for x, y in segments(ids, config.adapt_segment):
        reader.read(x, y)
    return reader.model.requires_grad_(False).eval()


def continuation_start(text: str) -> str:
    """Where generation picks up after an adapted text: its last START_CHARS characters,
    from the first line that begins among them when one does."""
    tail = text[-START_CHARS:]
    newline = tail.find("\n")
    if len(text) > START_CHARS and 0 <= newline < len(tail) - 1:
        return tail[newline + 1 :]
    return tail


@dataclass(frozen=True)
class Adaptation:
    """What adapting needs besides a text: the config, and the gradient statistics of the
    model it was computed for."""

    config: AdaptConfig
    stats: GradientStats
    threads: int = ONE_STREAM_THREADS

    @classmethod
    def prepare(
        cls, model: CharRNNModel, train_ids: np.ndarray, config: AdaptConfig, threads: int | None = None
    ) -> Adaptation:
        """Statistics from the last `config.adapt_stats_chars` characters of `train_ids`;
        `threads` (default ONE_STREAM_THREADS) for all the arithmetic of adapting."""
        threads = threads or ONE_STREAM_THREADS
        tail = train_ids[max(0, len(train_ids) - config.adapt_stats_chars - 1) :]
        if len(tail) <= config.adapt_segment:
            raise CharRNNError(
                f"adaptation needs more than one segment ({config.adapt_segment} characters) of "
                f"training text for its gradient statistics; the training part has {len(train_ids)}"
            )
        with using_threads(threads):
            return cls(config, gradient_statistics(model, tail, config.adapt_segment), threads)

    def evaluate(self, model: CharRNNModel, ids: np.ndarray) -> AdaptedEval:
        with using_threads(self.threads):
            return evaluate_adapted(model, ids, self.stats, self.config)

    def adapted_model(self, model: CharRNNModel, ids: np.ndarray) -> CharRNNModel:
        with using_threads(self.threads):
            return adapted_model(model, ids, self.stats, self.config)
