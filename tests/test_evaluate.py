import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from char_rnn.config import ModelConfig
from char_rnn.evaluate import evaluate, evaluate_windows
from char_rnn.model.network import CharRNNModel


@pytest.fixture
def model_and_ids():
    torch.manual_seed(0)
    model = CharRNNModel(ModelConfig(vocab_size=13, embedding_dim=8, units=16)).eval()
    ids = np.random.default_rng(0).integers(0, 13, 1001).astype(np.uint8)
    return model, ids


def test_one_stream_is_the_whole_text_read_with_the_state_carried(model_and_ids):
    model, ids = model_and_ids
    x = torch.from_numpy(ids[:-1].astype(np.int64)).unsqueeze(0)
    y = torch.from_numpy(ids[1:].astype(np.int64))
    with torch.no_grad():
        expected = F.cross_entropy(model(x)[0][0], y).item()
    result = evaluate(model, ids, streams=1, chunk=64)
    assert result.chars == 1000
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.bpc == pytest.approx(expected / math.log(2), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)


def test_chunk_size_does_not_change_the_result(model_and_ids):
    model, ids = model_and_ids
    a = evaluate(model, ids, streams=7, chunk=5)
    b = evaluate(model, ids, streams=7, chunk=1000)
    assert a.chars == b.chars == 1000
    assert a.loss == pytest.approx(b.loss, rel=1e-5)


def test_windows_start_from_a_zero_state(model_and_ids):
    model, ids = model_and_ids
    result = evaluate_windows(model, ids, window=100, batch=3)
    x = torch.from_numpy(ids[:1000].astype(np.int64)).view(10, 100)
    y = torch.from_numpy(ids[1:1001].astype(np.int64)).view(10, 100)
    with torch.no_grad():
        expected = F.cross_entropy(model(x)[0].transpose(1, 2), y).item()
    assert result.chars == 1000
    assert result.loss == pytest.approx(expected, rel=1e-5)


def test_streams_warmed_up_on_the_whole_text_before_them_give_the_one_stream_figure(model_and_ids):
    model, ids = model_and_ids
    one = evaluate(model, ids, streams=1)
    warmed = evaluate(model, ids, streams=7, warmup=len(ids), chunk=64)
    cold = evaluate(model, ids, streams=7, warmup=0)
    assert warmed.chars == cold.chars == one.chars == 1000
    assert warmed.loss == pytest.approx(one.loss, rel=1e-5)
    assert abs(cold.loss - one.loss) > 1e-4  # without warm-up the streams' starts lack context


def test_a_short_warm_up_still_scores_every_prediction_once(model_and_ids):
    model, ids = model_and_ids
    a = evaluate(model, ids, streams=9, warmup=30, chunk=7)
    b = evaluate(model, ids, streams=9, warmup=30, chunk=1000)
    assert a.chars == b.chars == 1000
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
