import pytest
import torch

from char_rnn.generate.sampling import sample_next


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]


def test_same_generator_seed_same_draws():
    logits = torch.randn(4, 30)
    a = sample_next(logits, generator=torch.Generator().manual_seed(3))
    b = sample_next(logits, generator=torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist()


def test_top_k_only_draws_among_the_k_best():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]).repeat(500, 1)
    draws = sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 4}


def test_top_p_keeps_the_smallest_set_holding_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(2000, 1)
    draws = sample_next(probs.log(), top_p=0.75, generator=torch.Generator().manual_seed(0))
    # 0.5 alone is below 0.75, 0.5 + 0.3 reaches it: exactly the first two remain
    assert set(draws.tolist()) == {0, 1}
    tiny = sample_next(probs.log(), top_p=0.01, generator=torch.Generator().manual_seed(0))
    assert set(tiny.tolist()) == {0}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sharpens_or_flattens(temperature):
    logits = torch.tensor([[0.0, 1.0]]).repeat(20000, 1)
    draws = sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(0))
    share = draws.float().mean().item()
    expected = torch.softmax(torch.tensor([0.0, 1.0]) / temperature, dim=0)[1].item()
    assert abs(share - expected) < 0.02
