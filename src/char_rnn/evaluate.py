"""Loss of a model on a text: nats and bits per character, perplexity.

`evaluate_corpus` reads one split of a corpus (data/corpus.py) through its memory map,
as training does; `evaluate` and `evaluate_windows` take any ids that slice like an array.

The text is read with the state carried from character to character. To use the
whole batch width of the hardware, it is cut into S contiguous streams that are
read side by side, and every character after the first is predicted exactly once.
Each stream but the first starts `warmup` characters before its own part and scores
nothing there, so that its first scored character has the context a single stream
reading the whole text would give it (that far back, at least).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.corpus import Corpus
from .data.items import IGNORED, Items, batch_bounds, find_items, split_items
from .data.vocab import Vocab
from .device import autocast
from .errors import CharRNNError, UsageError
from .model.network import CharRNNModel
from .threads import ThreadChoice, thread_choice

# How the carried loss reads a text: 64 streams fill a CPU's GEMMs far better than 16, and
# 256 characters of warm-up before each give it the figure of one stream reading the whole
# text (bench/eval_speed.py measures both against that one stream).
EVAL_STREAMS = 64
EVAL_WARMUP = 256

if TYPE_CHECKING:
    from .adapt import Adaptation


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
    ids: np.ndarray, n_streams: int, chunk: int, warmup: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Inputs, targets and a mask, each (S, <=chunk), chunk after chunk: the N-1 predictions
    split into S contiguous parts, one a row, each row reading up to `warmup` characters
    before its part unmasked. Each chunk is sliced from `ids` as it is needed, so a
    memory-mapped text is never copied whole."""
    n_targets = len(ids) - 1
    n_streams = max(1, min(n_streams, n_targets))
    length = math.ceil(n_targets / n_streams)
    firsts = [max(0, s * length - warmup) for s in range(n_streams)]  # where each row starts reading
    width_all = length + max(s * length - first for s, first in enumerate(firsts))
    for start in range(0, width_all, chunk):
        width = min(chunk, width_all - start)
        inputs = np.zeros((n_streams, width), dtype=np.int64)
        targets = np.zeros((n_streams, width), dtype=np.int64)
        mask = np.zeros((n_streams, width), dtype=bool)
        for s, first in enumerate(firsts):
            lo = first + start
            hi = min(lo + width, (s + 1) * length, n_targets)
            if lo >= hi:
                continue
            inputs[s, : hi - lo] = ids[lo:hi]
            targets[s, : hi - lo] = ids[lo + 1 : hi + 1]
            scored = max(s * length - lo, 0)  # the warm-up left in this chunk
            mask[s, scored : hi - lo] = True
        yield torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask)


def whole_streams(
    ids: np.ndarray, n_streams: int, warmup: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same layout as `stream_chunks`, in one piece (S, L)."""
    return next(stream_chunks(ids, n_streams, chunk=len(ids) + warmup, warmup=warmup))


@torch.no_grad()
def evaluate(
    model: CharRNNModel,
    ids: np.ndarray,
    *,
    streams: int = EVAL_STREAMS,
    warmup: int = EVAL_WARMUP,
    chunk: int = 256,
    dtype: torch.dtype = torch.float32,
    threads: ThreadChoice | None = None,
) -> EvalResult:
    """Mean cross-entropy over every next-character prediction in `ids`, read in `streams`
    streams side by side, each after `warmup` characters of context (module docstring);
    each chunk runs with the count `threads` chooses (threads.py; None: a new choice,
    measured)."""
    if len(ids) < 2:
        raise ValueError("evaluation needs at least two characters")
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    threads = threads or thread_choice()
    total, count, state = 0.0, 0, None
    for inputs, targets, mask in stream_chunks(ids, streams, chunk, warmup):
        x, y, m = inputs.to(device), targets.to(device), mask.to(device)
        with threads.unit(x.shape[1] / chunk):
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
    threads: ThreadChoice | None = None,
) -> EvalResult:
    """Mean loss over independent windows, each read from a zero state (the protocol
    transformer baselines such as nanoGPT report)."""
    n_windows = (len(ids) - 1) // window
    if n_windows < 1:
        raise ValueError(f"the text is shorter than one window of {window + 1} characters")
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    threads = threads or thread_choice()
    total = 0.0
    for first in range(0, n_windows, batch):
        rows = min(batch, n_windows - first)
        # Sliced batch by batch, so a memory-mapped text is never copied whole.
        piece = torch.from_numpy(
            np.asarray(ids[first * window : (first + rows) * window + 1], dtype=np.int64)
        )
        x = piece[:-1].view(rows, window).to(device)
        y = piece[1:].view(rows, window).to(device)
        with threads.unit(rows / batch):
            with autocast(device, dtype):
                logits, _ = model(x)
            total += float(F.cross_entropy(logits.float().transpose(1, 2), y, reduction="sum"))
    model.train(was_training)
    chars = n_windows * window
    return EvalResult(loss=total / chars, chars=chars)


@torch.no_grad()
def evaluate_items(
    model: CharRNNModel,
    items: Items,
    *,
    budget: int = 32_768,
    dtype: torch.dtype = torch.float32,
    threads: ThreadChoice | None = None,
) -> EvalResult:
    """Mean cross-entropy per prediction over whole items, each read from a zero state after
    the item mark: every character, and the end of each item, is one prediction."""
    if len(items) == 0:
        raise ValueError("evaluation needs at least one item")
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    order = np.argsort(items.lengths, kind="stable")
    widths = items.lengths[order] + 1
    bounds = batch_bounds(widths, max(budget, int(widths[-1])))
    threads = threads or thread_choice()
    total = 0.0
    for lo, hi in pairwise(bounds):
        x, y = items.rows(order[lo:hi])
        with threads.unit(x.numel() / budget):
            with autocast(device, dtype):
                logits, _ = model(x.to(device))
            logits = logits.float().transpose(1, 2)
            total += float(F.cross_entropy(logits, y.to(device), ignore_index=IGNORED, reduction="sum"))
    model.train(was_training)
    return EvalResult(loss=total / items.predictions, chars=items.predictions)


@dataclass(frozen=True)
class CorpusEval:
    """A model's loss on one split of a corpus: with the state carried through the whole
    text and, when a window was asked for, over independent windows of that size. Read with
    adaptation (adapt.py), `carried` is the adapted loss and `static` the trained weights'
    loss on the same text, read the same way."""

    source: str
    split: str
    carried: EvalResult
    window: int = 0
    windows: EvalResult | None = None
    items: int = 0  # for a list of items: how many were scored, each whole
    static: EvalResult | None = None

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
        if self.items:
            figures["items"] = self.items
        if self.static is not None:
            figures["static_loss"] = self.static.loss
            figures["static_bpc"] = self.static.bpc
        return figures


def evaluate_corpus(
    model: CharRNNModel,
    corpus: Corpus,
    *,
    split: str,
    val_fraction: float,
    window: int = 0,
    streams: int = EVAL_STREAMS,
    items: str | None = None,
    seed: int = 0,
    adaptation: Adaptation | None = None,
    dtype: torch.dtype = torch.float32,
    threads: ThreadChoice | None = None,
) -> CorpusEval:
    """The loss on `corpus.part(split, val_fraction)`, the same split training makes; also
    over independent windows of `window` characters unless it is 0. With `items` (a kind of
    items), the loss over the split's items, each whole, split as training with `seed` did.
    With `adaptation`, the carried loss is read adapting, with the static one beside it.
    The static figures run under autocast to `dtype`; adaptation always learns in fp32."""
    if window < 0:
        raise UsageError(f"window must be a positive number of characters (0: none), got {window}")
    if items:
        return _evaluate_item_corpus(model, corpus, split, val_fraction, items, seed, dtype, threads)
    ids = corpus.part(split, val_fraction)
    what = f"{split} text of {corpus.source}"
    if len(ids) < 2:
        raise CharRNNError(f"{what} needs at least two characters")
    static = None
    if adaptation is not None:
        adapted = adaptation.evaluate(model, ids)
        carried, static = adapted.adapted, adapted.static
    else:
        carried = evaluate(model, ids, streams=streams, dtype=dtype, threads=threads)
    windows = None
    if window:
        if len(ids) <= window:
            raise CharRNNError(f"{what} is shorter than one window of {window + 1} characters")
        windows = evaluate_windows(
            model, ids, window=window, dtype=dtype, threads=thread_choice(threads and threads.pinned)
        )
    return CorpusEval(corpus.source, split, carried, window, windows, static=static)


def _evaluate_item_corpus(
    model: CharRNNModel,
    corpus: Corpus,
    split: str,
    val_fraction: float,
    kind: str,
    seed: int,
    dtype: torch.dtype,
    threads: ThreadChoice | None,
) -> CorpusEval:
    corpus.part(split, val_fraction)  # checks the split's name
    found = find_items(corpus.ids, corpus.vocab, kind, what=f"corpus {corpus.source}")
    train, val = split_items(found, val_fraction, seed)
    part = {"all": found, "train": train, "val": val}[split]
    if len(part) == 0:
        raise CharRNNError(f"the {split} part of {corpus.source} holds no item")
    result = evaluate_items(model, part, dtype=dtype, threads=threads)
    return CorpusEval(corpus.source, split, result, items=len(part))


@torch.no_grad()
def evaluate_steps(
    step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]],
    ids: np.ndarray,
    *,
    streams: int = EVAL_STREAMS,
    warmup: int = EVAL_WARMUP,
) -> EvalResult:
    """Mean cross-entropy over `ids` laid out as `evaluate` lays them out, read one position
    at a time through `step(ids (S, 1), state) -> (logits (S, V), state)`, state None at
    first: the loss of a generation engine's own step (the fast engine's int8 weights, say)
    on exactly the predictions `evaluate` scores for the model."""
    if len(ids) < 2:
        raise ValueError("evaluation needs at least two characters")
    inputs, targets, mask = (a.t().contiguous() for a in whole_streams(ids, streams, warmup))  # (L, S)
    losses = torch.empty(inputs.shape, dtype=torch.float32)
    state = None
    for t in range(inputs.shape[0]):
        logits, state = step(inputs[t].unsqueeze(1), state)
        losses[t] = F.cross_entropy(logits.float(), targets[t], reduction="none")
    return EvalResult(loss=float(losses[mask].sum() / mask.sum()), chars=int(mask.sum()))


@dataclass(frozen=True)
class Score:
    """How surprising each character of a text is to a model: `bits[i]` is -log2 of the
    probability the model gave `chars[i]` after everything before it. For items, each item
    is scored from its mark and its end is scored too (`chars[i]` is None there)."""

    chars: list[str | None]
    bits: list[float]
    items: int = 0

    @property
    def total_bits(self) -> float:
        return float(sum(self.bits))

    @property
    def bits_per_char(self) -> float:
        return self.total_bits / max(len(self.bits), 1)

    def as_dict(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "total_bits": self.total_bits,
            "bits_per_char": self.bits_per_char,
            "chars": len(self.bits),
            "surprisal": [{"char": c, "bits": b} for c, b in zip(self.chars, self.bits, strict=True)],
        }
        if self.items:
            figures["items"] = self.items
        return figures


# A text is scored as if it followed a newline, as generation starts by default.
SCORE_CONTEXT = "\n"


@torch.no_grad()
def score_text(model: CharRNNModel, vocab: Vocab, text: str, items: str | None = None) -> Score:
    """The surprisal of every character of `text`: after a newline for one text (the first
    character needs some context), or from the mark for each item of an items model."""
    if not text:
        raise CharRNNError("the text to score is empty")
    ids = vocab.encode(text, what="the text to score")
    was_training = model.training
    model.eval()
    try:
        if items:
            return _score_items(model, find_items(ids, vocab, items, what="the text to score"), vocab)
        context = vocab.encode(SCORE_CONTEXT) if SCORE_CONTEXT in vocab else ids[:0]
        if len(context) == 0 and len(ids) < 2:
            raise CharRNNError("this model has no newline to start from: score at least two characters")
        sequence = np.concatenate([context, ids]) if len(context) else ids
        bits = _surprisal(model, sequence[None, :-1], sequence[None, 1:])[0]
        scored = text if len(context) else text[1:]
        return Score(list(scored), bits.tolist())
    finally:
        model.train(was_training)


def _surprisal(model: CharRNNModel, inputs: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    device = model.head.weight.device
    x = torch.as_tensor(np.asarray(inputs, dtype=np.int64), device=device)
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
    logits, _ = model(x)
    nats = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=IGNORED, reduction="none")
    return (nats / math.log(2)).cpu()


def _score_items(model: CharRNNModel, items: Items, vocab: Vocab) -> Score:
    chars: list[str | None] = []
    bits: list[float] = []
    for index in range(len(items)):
        x, y = items.rows(np.array([index]))
        item_bits = _surprisal(model, x.numpy(), y.numpy())[0]
        chars += [*vocab.decode(items.item(index)), None]
        bits += item_bits.tolist()
    return Score(chars, bits, items=len(items))
