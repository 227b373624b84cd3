"""A batch of independent streams that join and leave between rounds of steps.

The server's worker (serve/batching.py) owns one: each request is a stream with its own
start string, length, temperature, top-k, top-p, stop strings and seed, and every stream
in the batch advances in the same steps. A stream's text depends only on its own settings:
it has its own random generator, and the fast engine computes each row of a batch exactly
as it would alone (fast.py), so the same request and seed give the same text alone or
beside 63 others, and the same text as `CharRNN.generate` gives for one sample.

- `FastBatch`: every stream in one compiled loop over `ROUND_STEPS` steps, on the CPU.
- `EngineBatch`: any other engine (reference on a GPU, onnx): each stream's own iterator,
  advanced in turn; the same meaning, without the shared matrix products.
`open_batch` picks the one that fits an engine. Neither holds a thread or a lock: the
caller calls `add`, `remove` and `advance` from one thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..model.network import CharRNNModel
from .fast import FastEngine, RowSettings, fast_generator, read_start, row_settings
from .sampling import make_generator
from .stops import StopMatcher, check_stops

# Steps per round: a new stream waits at most one round to join, and a finished one costs
# at most one round of wasted rows; 16 steps hide the call from Python in the loop's work.
ROUND_STEPS = 16


@dataclass(eq=False)
class BatchStream:
    """One stream's place in a batch and what it has produced."""

    config: SampleConfig
    matcher: StopMatcher
    made: int = 0  # characters generated so far (stop strings included)
    sent: int = 0  # characters of final text released
    finished: bool = False
    state: Any = field(default=None, repr=False)  # the batch's own bookkeeping

    @property
    def stopped(self) -> str | None:
        return self.matcher.stopped

    def take(self, chars: str) -> str:
        """This round's characters (at most what is left of the length) -> the final text."""
        chars = chars[: self.config.length - self.made]
        self.made += len(chars)
        text = self.matcher.feed(chars)
        if self.matcher.stopped is None and self.made >= self.config.length:
            text += self.matcher.flush()
        self.finished = self.matcher.stopped is not None or self.made >= self.config.length
        self.sent += len(text)
        return text


def _check(vocab: Vocab, config: SampleConfig) -> None:
    if config.num_samples != 1:
        raise ValueError("a batch stream is one sample; add one stream per sample")
    vocab.check(config.start, "the start string")
    check_stops(vocab, config.stop)


class FastBatch:
    """Streams stepped together through the fast engine's compiled loop (CPU)."""

    def __init__(self, model: CharRNNModel, vocab: Vocab, *, weights: str = "auto", capacity: int = 8):
        self.model = model.eval()
        self.vocab = vocab
        self.fast = fast_generator(model, weights)
        self.weights = self.fast.weights
        self.streams: list[BatchStream] = []  # row i of every buffer is streams[i]
        self._settings: RowSettings | None = None  # the rows' settings, until a stream joins or leaves
        self.chars = np.array(vocab.chars, dtype=object)
        self._allocate(capacity)
        # The first forward pass may build the native kernels and the first round compiles
        # the loop: done now, so that no request waits for it.
        warm = self.add(SampleConfig(start=vocab.chars[0] * 2, length=ROUND_STEPS, seed=0))
        self.advance()
        self.remove(warm)

    def _allocate(self, capacity: int) -> None:
        """Buffers for `capacity` rows, keeping the rows in use."""
        c, used = self.model.config, len(self.streams)
        h = torch.zeros(c.layers, capacity, c.units)
        cell = torch.zeros(c.layers, capacity, c.units)
        logits = torch.zeros(capacity, c.vocab_size)
        if used:
            h[:, :used], cell[:, :used] = self.h[:, :used], self.c[:, :used]
            logits[:used] = self.logits[:used]
        self.h, self.c, self.logits = h, cell, logits
        self.out = torch.empty(ROUND_STEPS, capacity, dtype=torch.long)
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, config: SampleConfig) -> BatchStream:
        """One stream: `join([config])`."""
        return self.join([config])[0]

    @torch.no_grad()
    def join(self, configs: list[SampleConfig]) -> list[BatchStream]:
        """Read the start strings and give each stream the next row. Start strings of one
        length are read together, a step at a time through the packed weights (as the fast
        engine reads one alone, and computing each row as it would alone): a crowd that
        arrives at once costs about one reading, since each step's cost is the weights'."""
        for config in configs:
            _check(self.vocab, config)
        streams = [BatchStream(config, StopMatcher(config.stop)) for config in configs]
        by_length: dict[int, list[BatchStream]] = {}
        for stream in streams:
            stream.state = make_generator(stream.config.seed)
            if stream.config.length == 0:
                stream.finished = True
            else:
                by_length.setdefault(len(stream.config.start), []).append(stream)
        for group in by_length.values():
            self._place(group, read_start(self.fast, self.vocab, [s.config.start for s in group]))
        return streams

    def _place(self, group: list[BatchStream], read: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        logits, h, c = read
        while len(self.streams) + len(group) > self.capacity:
            self._allocate(2 * self.capacity)
        rows = slice(len(self.streams), len(self.streams) + len(group))
        self.h[:, rows], self.c[:, rows], self.logits[rows] = h, c, logits
        self.streams.extend(group)
        self._settings = None

    def remove(self, stream: BatchStream) -> None:
        """Free the stream's row at once (the last row moves into it); a stream not in the
        batch is ignored."""
        try:
            row = self.streams.index(stream)
        except ValueError:
            return
        last = len(self.streams) - 1
        if row != last:
            self.h[:, row], self.c[:, row] = self.h[:, last], self.c[:, last]
            self.logits[row] = self.logits[last]
            self.streams[row] = self.streams[last]
        self.streams.pop()
        self._settings = None

    @torch.no_grad()
    def advance(self) -> list[tuple[BatchStream, str]]:
        """One round for every stream: its new final text (streams that finish are marked
        `finished`; removing them is the caller's)."""
        batch = len(self.streams)
        if batch == 0:
            return []
        if self._settings is None:
            self._settings = row_settings([s.config for s in self.streams], self.model.config.vocab_size)
        # Each stream draws its own uniforms from its own generator, in order.
        uniforms = torch.stack([torch.rand(ROUND_STEPS, generator=s.state) for s in self.streams], 1)
        out = self.out[:, :batch]
        logits = self.fast.loop(
            self.logits[:batch], self.h[:, :batch], self.c[:, :batch], uniforms, out,
            self._settings,
        )  # fmt: skip
        self.logits[:batch] = logits
        columns = self.chars[out.numpy()].T  # (B, K)
        return [(s, s.take("".join(chars))) for s, chars in zip(self.streams, columns, strict=True)]


class EngineBatch:
    """Streams of any engine, each its own iterator, advanced in turn a round at a time."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.vocab: Vocab = engine.vocab
        self.streams: list[BatchStream] = []

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, config: SampleConfig) -> BatchStream:
        _check(self.vocab, config)
        stream = BatchStream(config, StopMatcher(config.stop))
        stream.state = iter(self.engine.stream(config))
        if config.length == 0:
            stream.finished = True
            return stream
        self.streams.append(stream)
        return stream

    def join(self, configs: list[SampleConfig]) -> list[BatchStream]:
        for config in configs:
            _check(self.vocab, config)
        return [self.add(config) for config in configs]

    def remove(self, stream: BatchStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
            close = getattr(stream.state, "close", None)
            if close is not None:
                close()

    def advance(self) -> list[tuple[BatchStream, str]]:
        results = []
        for stream in self.streams:
            steps: Iterator[list[str]] = stream.state
            chars = [step[0] for step in itertools.islice(steps, ROUND_STEPS)]
            results.append((stream, stream.take("".join(chars))))
        return results


def open_batch(engine: Any) -> FastBatch | EngineBatch:
    """The batch for an opened engine: shared steps for the fast engine, else in turn."""
    if isinstance(engine, FastEngine):
        return FastBatch(engine.model, engine.vocab, weights=engine.weights)
    return EngineBatch(engine)
