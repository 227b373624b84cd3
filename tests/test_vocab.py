import numpy as np
import pytest

from char_rnn.data.vocab import Vocab
from char_rnn.errors import CharRNNError


def test_vocabulary_is_the_sorted_set_of_characters():
    vocab = Vocab.from_text("hello world")
    assert vocab.chars == (" ", "d", "e", "h", "l", "o", "r", "w")


def test_encode_decode_round_trip(shakespeare_text):
    vocab = Vocab.from_text(shakespeare_text)
    assert len(vocab) == 65
    ids = vocab.encode(shakespeare_text[:5000])
    assert ids.dtype == np.uint8
    assert vocab.decode(ids) == shakespeare_text[:5000]


def test_large_vocabulary_uses_wider_ids():
    text = "".join(chr(0x4E00 + i) for i in range(3000))
    vocab = Vocab.from_text(text)
    assert vocab.encode(text).dtype == np.uint16
    assert vocab.decode(vocab.encode(text)) == text


def test_unknown_characters_are_listed():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharRNNError, match=r"2 character\(s\) not in this model's vocabulary.*'x'.*'z'"):
        vocab.encode("abxcz")


def test_control_characters_are_named():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharRNNError, match="U\\+0007"):
        vocab.check("a\x07")


def test_json_round_trip():
    vocab = Vocab.from_text("zyx\n Ω")
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_empty_vocabulary_is_refused():
    with pytest.raises(CharRNNError, match="empty"):
        Vocab.from_text("")
