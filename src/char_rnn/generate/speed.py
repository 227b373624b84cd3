"""Generation speed: characters per second of an engine, measured as a user sees them.

The timed part is the whole stream, strings included, after a warm-up that compiles
the fast engine and lets TorchScript's profiling executor settle. The random model of
the tutorial's size is what the README's figures and `char-rnn bench generate` use:
speed does not depend on what the weights have learned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ..config import PRESETS, ModelConfig, SampleConfig
from ..data.vocab import Vocab
from ..model.network import CharRNNModel
from . import Engine
from .fast import CHUNK


@dataclass(frozen=True)
class GenerationSpeed:
    engine: str
    batch_size: int
    length: int  # characters per stream
    seconds: float

    @property
    def chars_per_s(self) -> float:
        return self.batch_size * self.length / self.seconds


def tutorial_model(vocab: Vocab, seed: int = 0) -> CharRNNModel:
    """Embedding 256 -> GRU 1024 -> Linear, with random weights."""
    torch.manual_seed(seed)
    shape = {k: v for k, v in PRESETS["tutorial"].items() if k in ModelConfig.__dataclass_fields__}
    return CharRNNModel(ModelConfig(vocab_size=len(vocab), **shape)).eval()


def measure_generation(
    engine: Engine, vocab: Vocab, *, batch_size: int = 1, length: int = 1000, seed: int = 0
) -> GenerationSpeed:
    config = SampleConfig(start=vocab.chars[0], length=length, num_samples=batch_size, seed=seed)
    for _ in engine.stream(replace(config, length=min(length, 3 * CHUNK))):
        pass
    started = time.perf_counter()
    for _ in engine.stream(config):
        pass
    return GenerationSpeed(engine.name, batch_size, length, time.perf_counter() - started)
