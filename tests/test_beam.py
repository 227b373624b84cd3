"""Beam search: N = 1 is greedy, a wider beam never finds a less likely continuation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from char_rnn.config import ModelConfig, SampleConfig
from char_rnn.data.vocab import Vocab
from char_rnn.errors import CharRNNError, UsageError
from char_rnn.generate import generate_texts
from char_rnn.generate.beam import beam_search
from char_rnn.generate.reference import ReferenceEngine
from char_rnn.model.network import CharRNNModel

VOCAB = Vocab("abcdefgh \n")


@torch.no_grad()
def continuation_log_prob(model: CharRNNModel, vocab: Vocab, start: str, continuation: str) -> float:
    """log P(continuation | start) under the model: the score beam search maximises."""
    if not continuation:
        return 0.0
    ids = torch.as_tensor(vocab.encode(start + continuation), dtype=torch.long)
    logits, _ = model(ids[:-1].unsqueeze(0), None)
    log_probs = F.log_softmax(logits[0].float(), dim=-1)  # (T, V)
    picked = log_probs.gather(1, ids[1:].unsqueeze(1)).squeeze(1)
    return float(picked[len(start) - 1 :].sum())


def greedy_text(model: CharRNNModel, config: SampleConfig) -> str:
    return generate_texts(ReferenceEngine(model, VOCAB), config)[0]


@pytest.fixture(scope="module", params=["gru", "lstm"])
def model(request) -> CharRNNModel:
    torch.manual_seed(0)
    model = CharRNNModel(ModelConfig(vocab_size=len(VOCAB), embedding_dim=8, units=32, layers=2,
                                     cell=request.param))  # fmt: skip
    with torch.no_grad():  # peaked, state-dependent distributions: greedy is then often not the best
        model.head.weight.mul_(6)
    return model.eval()


def test_beam_of_one_is_greedy(model):
    greedy = greedy_text(model, SampleConfig(start="ab", length=60, temperature=0))
    assert beam_search(model, VOCAB, "ab", 60, beams=1).text == greedy


@pytest.mark.parametrize("beams", [2, 5, 16])
def test_wider_beams_find_continuations_at_least_as_likely_as_greedy(model, beams):
    greedy = greedy_text(model, SampleConfig(start="ab", length=40, temperature=0))
    greedy_log_prob = continuation_log_prob(model, VOCAB, "ab", greedy[2:])
    result = beam_search(model, VOCAB, "ab", 40, beams=beams)
    assert result.text.startswith("ab") and len(result.text) == 42
    # the score beam search reports is the model's log-probability of its text
    assert result.log_prob == pytest.approx(
        continuation_log_prob(model, VOCAB, "ab", result.text[2:]), abs=1e-4
    )
    assert result.log_prob >= greedy_log_prob - 1e-4


def test_some_beam_beats_greedy_somewhere(model):
    """Guards the previous test against a beam search that merely returns the greedy text."""
    gains = []
    for start in ("a", "b", "c", "d", "e"):
        greedy = greedy_text(model, SampleConfig(start=start, length=30, temperature=0))
        greedy_log_prob = continuation_log_prob(model, VOCAB, start, greedy[1:])
        gains.append(beam_search(model, VOCAB, start, 30, beams=8).log_prob - greedy_log_prob)
    assert max(gains) > 1e-3


def test_beam_search_is_deterministic_and_validates(model):
    assert beam_search(model, VOCAB, "a", 30, 4) == beam_search(model, VOCAB, "a", 30, 4)
    assert beam_search(model, VOCAB, "a", 0, 4).text == "a"
    with pytest.raises(UsageError, match="beam"):
        beam_search(model, VOCAB, "a", 10, 0)
    with pytest.raises(CharRNNError, match="vocabulary"):
        beam_search(model, VOCAB, "z", 10, 2)


def test_cli_beam(tmp_path, small_corpus):
    from char_rnn import CharRNN

    run = tmp_path / "run"
    trained = CharRNN.train(
        data=str(small_corpus), out=str(run), embedding_dim=8, units=16, batch_size=8,
        seq_length=32, max_steps=5, quiet=True, precision="fp32",
    )  # fmt: skip
    result = run_cli("generate", run, "--start", "ROMEO:", "--length", "40", "--beam", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout == trained.beam_search("ROMEO:", 40, beams=4).text + "\n"
    both = run_cli("generate", run, "--beam", "4", "--num-samples", "2")
    assert both.returncode == 2 and "--beam" in both.stderr and both.stderr.count("\n") == 1
