"""Generation engines: the ways of turning a model and a SampleConfig into text.

An engine is opened once on a model and its vocabulary (`open_engine`) and then answers
one call, `stream(config)`: an iterator that yields, per step, the next character of each
of the `config.num_samples` texts, after checking the start string against the vocabulary.
Every engine gives the start string, length, temperature, top-k and top-p the same meaning,
and the same seed the same text on every run of that engine. Stop strings are applied
above the engines (`stream_texts`, stops.py), the same way for all of them. Engines differ in speed and in
the order of their random draws, so the same seed may give different texts on different ones.

- fast: compiled loop, int8 or fp32 weights, CPU (the default; falls back to reference elsewhere)
- reference: `model.forward` once per character; any device
- onnx: the run's exported model.onnx in onnxruntime, CPU (the `onnx` extra); it draws as
  the reference does, so the same seed gives the reference's text

Beam search (beam.py) is a method beside the engines, not one of them: it looks for the
likeliest continuation rather than drawing one, so it takes no temperature, top-k, top-p,
seed or number of samples, and it cannot stream (the best text is known only at the end).
It also reorders the state between candidates at every step, which an engine's one call
does not expose; so it runs the model's forward pass, on any device.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..errors import UsageError
from ..model.network import CharRNNModel
from . import fast
from .reference import ReferenceEngine
from .stops import check_stops, stop_streams


class Engine(Protocol):
    name: str
    vocab: Vocab

    def stream(self, config: SampleConfig) -> Iterator[list[str]]: ...


# Opens an engine on a loaded model and vocabulary; an engine that reads a file of its own
# also gets the run folder (None when the model did not come from one) and which weights;
# one that runs PyTorch on the CPU, the count of threads asked for (None: measured, threads.py).
Opener = Callable[[CharRNNModel, Vocab, "str | os.PathLike | None", str, "int | None"], Engine]


@dataclass(frozen=True)
class EngineKind:
    summary: str  # one line for a reader choosing an engine, e.g. in --engine's help
    open: Opener
    cpu_only: bool = False  # runs on the CPU whatever the model's device: another is refused, not ignored


def _open_fast(
    model: CharRNNModel, vocab: Vocab, run: str | os.PathLike | None, which: str, threads: int | None
) -> Engine:
    if fast.supports(model):
        return fast.FastEngine(model, vocab, threads=threads)
    return ReferenceEngine(model, vocab)


def _open_reference(
    model: CharRNNModel, vocab: Vocab, run: str | os.PathLike | None, which: str, threads: int | None
) -> Engine:
    return ReferenceEngine(model, vocab)


def _open_onnx(
    model: CharRNNModel, vocab: Vocab, run: str | os.PathLike | None, which: str, threads: int | None
) -> Engine:
    if run is None:
        raise UsageError(
            "the onnx engine reads a run folder's exported model.onnx, and no run folder was given"
        )
    if not isinstance(model, CharRNNModel):
        raise UsageError("the onnx engine runs one exported model; an ensemble runs on fast or reference")
    from ..onnx.engine import OnnxEngine  # onnxruntime is an optional extra

    return OnnxEngine.load(run, vocab, model.config, which=which)


# Every engine, by the name users give: CharRNN.load(engine=...) and the CLI's --engine
# choices are read from here.
ENGINES: dict[str, EngineKind] = {
    "fast": EngineKind("a compiled loop, int8 weights on the CPU (elsewhere: reference)", _open_fast),
    "reference": EngineKind("the model once per character", _open_reference),
    "onnx": EngineKind("RUN/model.onnx in onnxruntime, after char-rnn export", _open_onnx, cpu_only=True),
}
DEFAULT_ENGINE = "fast"


def engine_kind(name: str) -> EngineKind:
    try:
        return ENGINES[name]
    except KeyError:
        raise UsageError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}") from None


def open_engine(
    name: str,
    model: CharRNNModel,
    vocab: Vocab,
    *,
    run: str | os.PathLike | None = None,
    which: str = "latest",
    threads: int | None = None,
) -> Engine:
    """`threads`: pin the CPU threads of an engine that runs PyTorch (default: measured)."""
    return engine_kind(name).open(model, vocab, run, which, threads)


def stream_texts(engine: Engine, config: SampleConfig) -> Iterator[list[str]]:
    """Per step, the new text of each sample: one character each, or with stop strings the
    part that became final (stops.py). The start and stop strings are checked first."""
    steps = engine.stream(config)
    check_stops(engine.vocab, config.stop)
    return stop_streams(steps, config)


def generate_texts(engine: Engine, config: SampleConfig) -> list[str]:
    """The start string followed by up to `length` generated characters, for each sample
    (fewer where a stop string ended it)."""
    texts = [[config.start] for _ in range(config.num_samples)]
    for step in stream_texts(engine, config):
        for text, piece in zip(texts, step, strict=True):
            text.append(piece)
    return ["".join(t) for t in texts]
