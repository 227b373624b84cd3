import numpy as np
import pytest

from char_rnn.data.batches import ShuffledBatches, StatefulBatches
from char_rnn.errors import CharRNNError


def test_stateful_batches_continue_each_stream():
    ids = np.arange(1000) % 251
    batches = StatefulBatches(ids, batch_size=4, seq_length=10)
    x0, y0 = batches.get(0, 0)
    x1, _ = batches.get(0, 1)
    assert x0.shape == (4, 10)
    # targets are inputs shifted by one
    assert (y0[:, :-1] == x0[:, 1:]).all()
    # batch 1 of each stream starts right after batch 0 of the same stream
    assert (x1[:, 0] == y0[:, -1]).all()
    # streams are contiguous thirds of the text: row r starts at r * 250
    assert [int(v) for v in x0[:, 0]] == [0, 250 % 251, 500 % 251, 750 % 251]
    assert batches.batches_per_epoch == (250 - 1) // 10


def test_shuffled_batches_are_windows_in_a_seeded_order():
    ids = np.arange(5000) % 200
    a = ShuffledBatches(ids, batch_size=8, seq_length=20, seed=1)
    b = ShuffledBatches(ids, batch_size=8, seq_length=20, seed=1)
    xa, ya = a.get(0, 3)
    xb, yb = b.get(0, 3)
    assert (xa == xb).all() and (ya == yb).all()
    assert (ya[:, :-1] == xa[:, 1:]).all()
    x_next_epoch, _ = a.get(1, 3)
    assert not (x_next_epoch == xa).all()
    # every window is a real slice of the text
    for row in xa:
        start = int(row[0])
        assert (row.numpy() == (np.arange(start, start + 20) % 200)).all() or start > 180


def test_too_short_text_is_refused():
    with pytest.raises(CharRNNError, match="too few for one batch"):
        StatefulBatches(np.arange(100), batch_size=8, seq_length=20)
    with pytest.raises(CharRNNError, match="too few for one batch"):
        ShuffledBatches(np.arange(100), batch_size=8, seq_length=20, seed=0)
