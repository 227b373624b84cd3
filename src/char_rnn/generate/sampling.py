"""Sampling: one pure step (`sample_next`) and the loop around a model's step (`sample_stream`).

The loop primes the state with the whole start string in one step, then feeds back one
character at a time: each step reads the last sampled ids (B, 1) and the state, and gives
logits (B, V) for the next character. Only the state and the newest ids are kept, so
memory does not grow with the length of the text. The reference and ONNX engines are this
loop around their own step; the fast engine compiles its own (fast.py), with the filter here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..config import SampleConfig
from ..data.vocab import Vocab


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Scale `logits` (B, V) by the temperature and mask what top-k and top-p exclude with -inf.

    Every engine applies this, so temperature/top-k/top-p mean the same thing on all of them
    (the fast engine compiles it with TorchScript). Temperature 0 is handled by the callers."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a candidate when the ones ranked above it already hold top_p of the mass;
        # the most likely candidate is therefore always kept.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def filter_logits_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    use_top_k: bool,
    use_top_p: bool,
) -> torch.Tensor:
    """`filter_logits` with each row's own settings: temperature (B, 1) (> 0; greedy rows
    are the caller's), top_k (B, 1) (V or more: all) and top_p (B, 1) (1: all).

    Every row is computed by itself, with no reduction across rows, so a row's result does
    not depend on the rows beside it (streams batched together stay independent)."""
    logits = logits.float() / temperature
    if use_top_k:
        ranked = torch.sort(logits, dim=-1, descending=True).values
        kth_best = ranked.gather(-1, (top_k - 1).clamp(0, logits.shape[-1] - 1))
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if use_top_p:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = (probs.cumsum(dim=-1) - probs >= top_p) & (top_p < 1.0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_by_inverse_cdf(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one id per row of `logits` (B, V) from its softmax, given uniforms (B,) in [0, 1).

    The id is the first whose cumulative probability exceeds u: with the uniforms drawn
    ahead from a seeded generator, the draws are reproducible and need no generator call."""
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]
    # Keep u * total strictly below the total, so rounding never lands past the last
    # candidate with non-zero probability.
    target = torch.minimum(uniforms.unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row of `logits` (B, V). Temperature 0 is argmax (greedy)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# One step of a model: ids (B, T) and the state it returned last (None at first: a zero
# state) -> the logits (B, V) after the last of those ids, on the CPU, and the new state.
Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


def sample_stream(step: Step, vocab: Vocab, config: SampleConfig) -> Iterator[list[str]]:
    """Yield, per step, the next character of each of the `num_samples` texts that `step`
    and `sample_next` make from the start string (checked here, before the first step)."""
    vocab.check(config.start, "the start string")
    return _sample_stream(step, vocab, config)


def _sample_stream(step: Step, vocab: Vocab, config: SampleConfig) -> Iterator[list[str]]:
    if config.length == 0:
        return
    generator = make_generator(config.seed)
    start = torch.as_tensor(vocab.encode(config.start), dtype=torch.long)
    logits, state = step(start.unsqueeze(0).expand(config.num_samples, -1), None)
    chars = vocab.chars
    for _ in range(config.length):
        next_ids = sample_next(
            logits,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            generator=generator,
        )
        yield [chars[i] for i in next_ids.tolist()]
        logits, state = step(next_ids.unsqueeze(1), state)
