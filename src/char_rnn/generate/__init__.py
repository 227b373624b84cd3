"""Generation engines: the ways of turning a model and a SampleConfig into text.

Each engine is a function `stream(model, vocab, config) -> Iterator[list[str]]` that
yields, per step, the next character of each of the `config.num_samples` texts, with
the semantics of the reference engine (`sample.stream`): the same start string,
length, temperature, top-k and top-p, and the same seed giving the same text on every
run of that engine. Engines differ in speed and in the order of their random draws, so
the same seed gives different texts on different engines.

- fast: compiled loop, int8 or fp32 weights, CPU (the default; falls back to reference elsewhere)
- reference: `model.forward` once per character; any device
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..errors import UsageError
from ..model.network import CharRNNModel
from . import fast
from .sampling import stream as reference_stream

StreamFn = Callable[[CharRNNModel, Vocab, SampleConfig], Iterator[list[str]]]

DEFAULT_ENGINE = "fast"


def _fast_or_reference(model: CharRNNModel, vocab: Vocab, config: SampleConfig) -> Iterator[list[str]]:
    if fast.supports(model):
        return fast.stream(model, vocab, config)
    return reference_stream(model, vocab, config)


# Another engine registers itself here under its name (the CLI's --engine lists these).
ENGINES: dict[str, StreamFn] = {
    "fast": _fast_or_reference,
    "reference": reference_stream,
}


def engine_stream(engine: str) -> StreamFn:
    try:
        return ENGINES[engine]
    except KeyError:
        raise UsageError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}") from None
