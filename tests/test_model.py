import pytest
import torch

from char_rnn.config import ModelConfig, build_configs, with_vocab
from char_rnn.model.network import CharRNNModel


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_whole_sequence_equals_chunks_with_state_carried(cell, layers):
    torch.manual_seed(0)
    model = CharRNNModel(ModelConfig(vocab_size=11, embedding_dim=8, units=16, layers=layers, cell=cell))
    model.eval()
    ids = torch.randint(0, 11, (3, 24))
    whole, _ = model(ids)
    assert whole.shape == (3, 24, 11)
    state, pieces = None, []
    for chunk in ids.split(5, dim=1):
        logits, state = model(chunk, state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole)


def test_tutorial_shapes_and_parameter_count():
    model = CharRNNModel(with_vocab(build_configs("tutorial")[0], 65))
    # Embedding 65x256, GRU 3*(1024*256 + 1024*1024 + 2*1024), Dense 1024*65 + 65
    expected = 65 * 256 + 3 * (1024 * 256 + 1024 * 1024 + 2 * 1024) + 1024 * 65 + 65
    assert model.num_parameters() == expected == 4_021_569


def test_initial_state_shapes():
    lstm = CharRNNModel(ModelConfig(vocab_size=5, units=7, layers=2, cell="lstm"))
    h, c = lstm.initial_state(3)
    assert h.shape == c.shape == (2, 3, 7)
    gru = CharRNNModel(ModelConfig(vocab_size=5, units=7, layers=2, cell="gru"))
    assert gru.initial_state(3).shape == (2, 3, 7)


@pytest.mark.parametrize("layers", [1, 2])
def test_dropout_only_in_training(layers):
    model = CharRNNModel(ModelConfig(vocab_size=5, embedding_dim=4, units=8, layers=layers, dropout=0.5))
    ids = torch.randint(0, 5, (2, 6))
    model.eval()
    a, _ = model(ids)
    b, _ = model(ids)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(1)
    c, _ = model(ids)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_weight_drop_masks_recurrent_weights_alike_on_both_paths(cell):
    """DropConnect: in training the fused CPU kernels and PyTorch's own layers see the same
    masked weights, the dropped weights get no gradient, and evaluation is untouched."""
    sizes = dict(vocab_size=7, embedding_dim=6, units=16, layers=2, cell=cell, dropout=0.0)
    model = CharRNNModel(ModelConfig(**sizes, weight_drop=0.5))
    plain = CharRNNModel(ModelConfig(**sizes))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 7, (3, 9))
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(ids)[0], plain(ids)[0])

    model.train()
    outputs, grads = [], []
    for fused in (True, False):
        model.fused_cpu = fused
        model.zero_grad()
        torch.manual_seed(3)
        logits, _ = model(ids)
        logits.square().sum().backward()
        outputs.append(logits)
        grads.append(model.rnn.weight_hh_l1.grad.clone())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    dropped = (grads[0] == 0).float().mean().item()
    assert 0.4 < dropped < 0.6
    assert not torch.allclose(outputs[0], plain.train()(ids)[0])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_variational_dropout_draws_the_same_masks_on_both_paths_and_keeps_them_over_time(cell):
    """One mask per sequence on the embedding, between the layers and on the output: the fused
    CPU kernels (time-major) and PyTorch's layers run one by one (batch-first) draw the same
    masks from the same seed, so both give the same logits and gradients; evaluation is
    untouched."""
    sizes = dict(vocab_size=7, embedding_dim=6, units=16, layers=2, cell=cell, dropout=0.4)
    model = CharRNNModel(ModelConfig(**sizes, variational_dropout=True))
    ids = torch.randint(0, 7, (3, 9))
    model.eval()
    plain = CharRNNModel(ModelConfig(**sizes))
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids)[0], plain.eval()(ids)[0])

    model.train()
    outputs, grads = [], []
    for fused in (True, False):
        model.fused_cpu = fused
        model.zero_grad()
        torch.manual_seed(5)
        logits, state = model(ids)
        (logits.square().sum() + sum(s.sum() for s in (state if cell == "lstm" else [state]))).backward()
        outputs.append(logits)
        grads.append((model.embedding.weight.grad.clone(), model.rnn.weight_ih_l1.grad.clone()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    for fused_grad, torch_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fused_grad, torch_grad, rtol=1e-4, atol=1e-5)

    # The embedding's mask is the same at every time step: a unit dropped at one step of a
    # sequence is dropped at all of them, so its gradient rows vanish together.
    torch.manual_seed(5)
    x = model.embedding(ids)
    dropped = model._drop(torch.ones_like(x), time_dim=1) == 0
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    assert dropped.any()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_layers_one_by_one_compute_what_the_whole_stack_does(cell):
    sizes = dict(vocab_size=7, embedding_dim=6, units=16, layers=3, cell=cell, dropout=0.0)
    model = CharRNNModel(ModelConfig(**sizes, variational_dropout=True)).train()
    model.fused_cpu = False
    ids = torch.randint(0, 7, (3, 9))
    state = model.initial_state(3)
    one_by_one = model._layer_by_layer(model.embedding(ids), state, {})
    whole = model.rnn(model.embedding(ids), state)
    torch.testing.assert_close(one_by_one[0], whole[0])
    for ours, theirs in zip(model_state(one_by_one[1]), model_state(whole[1]), strict=True):
        torch.testing.assert_close(ours, theirs)


def model_state(state):
    return list(state) if isinstance(state, tuple) else [state]
