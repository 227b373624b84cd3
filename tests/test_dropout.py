import pytest
import torch
import torch.nn.functional as F

from char_rnn.model.dropout import dropout


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keeps_one_minus_p_of_the_elements_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(200, 1000)
    y = dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    # The kept values carry the inverse of the keep rate, so the expectation is unchanged.
    assert torch.all(y[kept] == y[kept][0])
    assert abs(y.mean().item() - 1.0) < 0.01


def test_masks_are_independent_across_elements_and_calls():
    torch.manual_seed(0)
    a = dropout(torch.ones(100_000), 0.5) != 0
    b = dropout(torch.ones(100_000), 0.5) != 0
    # Neighbours share a random word; they must not share a decision.
    neighbours = (a[:-1] == a[1:]).float().mean().item()
    assert abs(neighbours - 0.5) < 0.01
    assert abs((a == b).float().mean().item() - 0.5) < 0.01


def test_same_seed_same_mask_and_gradient_through_the_same_mask():
    x = torch.randn(64, 37, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.3)
    y.sum().backward()
    torch.manual_seed(3)
    again = dropout(x.detach(), 0.3)
    assert torch.equal(y.detach(), again)
    scale = y.detach()[y.detach() != 0] / x.detach()[y.detach() != 0]
    torch.testing.assert_close(x.grad[y.detach() != 0], scale)
    assert torch.all(x.grad[y.detach() == 0] == 0)


def test_identity_when_not_training_or_p_zero_and_zero_at_p_one():
    x = torch.randn(10, 10)
    assert torch.equal(dropout(x, 0.5, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_agrees_with_pytorch_dropout_in_distribution():
    torch.manual_seed(0)
    x = torch.randn(500, 500)
    ours, theirs = dropout(x, 0.2), F.dropout(x, 0.2)
    assert abs((ours != 0).float().mean() - (theirs != 0).float().mean()) < 0.005
    assert abs(ours.std() - theirs.std()) < 0.01


@pytest.mark.parametrize("shared_dim", [0, 1])
def test_a_shared_mask_is_the_same_along_its_dimension_and_fresh_across_the_others(shared_dim):
    torch.manual_seed(0)
    y = dropout(torch.ones(50, 64, 300), 0.3, shared_dim=shared_dim)
    kept = y != 0
    first = kept.select(shared_dim, 0).unsqueeze(shared_dim)
    assert torch.equal(kept, first.expand_as(kept))  # every time step alike
    assert abs(first.float().mean().item() - 0.7) < 0.01  # p still applies across the rest
    assert abs(y.mean().item() - 1.0) < 0.02
