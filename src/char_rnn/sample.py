"""Sampling: one pure step (`sample_next`) and stateful generation (`stream`).

Generation primes the state with the whole start string in one forward pass, then
feeds back one character at a time: each step reads the last sampled ids (B, 1)
and the state, and gives logits (B, V) for the next character. Only the state and
the newest ids are kept, so memory does not grow with the length of the text.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import SampleConfig
from .model import CharRNNModel
from .vocab import Vocab


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
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.no_grad()
def stream(model: CharRNNModel, vocab: Vocab, config: SampleConfig) -> Iterator[list[str]]:
    """Yield, per step, the next character of each of the `num_samples` texts."""
    device = model.head.weight.device
    vocab.check(config.start, "the start string")
    if config.length == 0:
        return
    model.eval()
    generator = make_generator(config.seed)
    start = torch.as_tensor(vocab.encode(config.start), dtype=torch.long, device=device)
    ids = start.unsqueeze(0).expand(config.num_samples, -1)  # (B, T)
    logits, state = model(ids, None)
    logits = logits[:, -1].cpu()  # (B, V)
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
        logits, state = model(next_ids.to(device).unsqueeze(1), state)  # (B, 1, V)
        logits = logits[:, -1].cpu()


def generate(model: CharRNNModel, vocab: Vocab, config: SampleConfig) -> list[str]:
    """The start string followed by `length` generated characters, for each sample."""
    texts = [[config.start] for _ in range(config.num_samples)]
    for step in stream(model, vocab, config):
        for text, ch in zip(texts, step, strict=True):
            text.append(ch)
    return ["".join(t) for t in texts]
