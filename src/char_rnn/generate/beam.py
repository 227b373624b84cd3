"""Beam search: the most likely continuation of a start string, not a random one.

Sampling draws each character at random; greedy decoding (temperature 0) takes the
likeliest character each step, which can walk into a continuation that is unlikely as a
whole. Beam search keeps the N likeliest partial continuations (by the sum of their
characters' log-probabilities) and extends all of them each step: the N x V candidates
are ranked, the best N kept, and the state of each kept beam is copied from its parent.
With N = 1 it is greedy decoding. Deterministic: no random draws.

It is a method beside the generation engines (char_rnn.generate), not one of them: an
engine answers `stream(SampleConfig)` with texts drawn at random, as they are made, while
beam search has no temperature, top-k, top-p, seed or number of samples, and knows its
text only at the end. It also copies each kept beam's state from its parent at every step,
which an engine's one call does not expose, so it runs the model's own forward pass (any device).

Memory: the state is (L, N, H); the history keeps N ids and N parent indices per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.vocab import Vocab
from ..errors import UsageError
from ..model.network import CharRNNModel, State


@dataclass(frozen=True)
class BeamResult:
    text: str  # the start string followed by the continuation
    log_prob: float  # natural-log probability of the continuation given the start string


def _select(state: State, parents: torch.Tensor) -> State:
    """The state (L, N, H) of each kept beam, taken from its parent beam (for an LSTM, or an
    ensemble, each tensor of the tuple)."""
    if isinstance(state, tuple):
        return tuple(_select(s, parents) for s in state)
    return state.index_select(1, parents)


@torch.no_grad()
def beam_search(model: CharRNNModel, vocab: Vocab, start: str, length: int, beams: int) -> BeamResult:
    if not isinstance(beams, int) or beams < 1:
        raise UsageError(f"beam must be a positive integer, got {beams!r}")
    if not isinstance(length, int) or length < 0:
        raise UsageError(f"length must be a non-negative integer, got {length!r}")
    vocab.check(start, "the start string")
    model.eval()
    device = model.head.weight.device
    start_ids = torch.as_tensor(vocab.encode(start), dtype=torch.long, device=device)
    logits, state = model(start_ids.unsqueeze(0), None)  # one beam to begin with
    log_probs = F.log_softmax(logits[:, -1].float(), dim=-1)  # (N, V)
    scores = torch.zeros(1, device=device)  # (N,) log-prob of each beam so far
    vocab_size = log_probs.shape[-1]
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (parents, ids), each (N,)
    for step in range(length):
        candidates = (scores.unsqueeze(1) + log_probs).flatten()  # (N * V,)
        best = torch.topk(candidates, min(beams, candidates.numel()))
        parents = torch.div(best.indices, vocab_size, rounding_mode="floor")
        ids = best.indices % vocab_size
        scores = best.values
        history.append((parents, ids))
        if step + 1 < length:
            logits, state = model(ids.unsqueeze(1), _select(state, parents))
            log_probs = F.log_softmax(logits[:, -1].float(), dim=-1)
    # Walk back from the best final beam (topk sorts, so it is beam 0) through the parents.
    chosen: list[int] = []
    beam = 0
    for parents, ids in reversed(history):
        chosen.append(int(ids[beam]))
        beam = int(parents[beam])
    continuation = vocab.decode(list(reversed(chosen)))
    return BeamResult(text=start + continuation, log_prob=float(scores[0]) if history else 0.0)
