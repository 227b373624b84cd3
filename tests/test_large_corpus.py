"""The streaming encoder and its cache: the same ids as the in-memory encoder, read
through a memory map, encoded once while the corpus is unchanged."""

import hashlib

import numpy as np
import pytest

from char_rnn.data.batches import ShuffledBatches, StatefulBatches
from char_rnn.data.corpus import load_corpus
from char_rnn.data.encoded import CACHE_ENV, cache_folder, encode_text
from char_rnn.data.text import TextFiles
from char_rnn.data.vocab import Vocab
from char_rnn.errors import CharRNNError

# Multi-byte characters of every UTF-8 length, so that small chunks split them.
MIXED = "naïve café — “quoted” 東京 😀 end\n"


def _encode(path, chunk_bytes, encoding="utf-8"):
    return encode_text(TextFiles([path], encoding, str(path), join_lines=False), chunk_bytes=chunk_bytes)


def text_sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cached_ids_files():
    return sorted(cache_folder().glob("*.ids"))


@pytest.mark.parametrize("chunk_bytes", [1, 5, 7, 1 << 20])
def test_streamed_ids_equal_the_in_memory_encoding(tmp_path, shakespeare_text, chunk_bytes):
    text = MIXED + shakespeare_text[:3000] + MIXED * 3
    path = tmp_path / f"mixed-{chunk_bytes}.txt"
    path.write_text(text, encoding="utf-8")
    encoded = _encode(path, chunk_bytes)
    vocab = Vocab.from_text(text)
    assert encoded.vocab == vocab
    assert encoded.ids.dtype == np.uint8
    np.testing.assert_array_equal(encoded.ids, vocab.encode(text))
    # The resume check's hash: the text as UTF-8, which for a UTF-8 file is its bytes.
    assert encoded.sha256 == text_sha256(text) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_cjk_sized_vocabulary_gets_uint16_ids(tmp_path):
    rng = np.random.default_rng(0)
    text = "".join(chr(c) for c in rng.integers(0x4E00, 0x4E00 + 3000, size=20_000)) + "。\n"
    path = tmp_path / "cjk.txt"
    path.write_text(text, encoding="utf-8")
    encoded = _encode(path, chunk_bytes=4099)  # not a multiple of 3: characters are split
    vocab = Vocab.from_text(text)
    assert len(vocab) > 256 and encoded.ids.dtype == np.uint16
    np.testing.assert_array_equal(encoded.ids, vocab.encode(text))


def test_the_cache_is_reused_until_the_corpus_changes(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    first = load_corpus(str(small_corpus))
    assert isinstance(first.ids, np.memmap)
    (entry,) = _cached_ids_files()
    stamp = entry.stat().st_ino, entry.stat().st_mtime_ns
    second = load_corpus(str(small_corpus))
    assert _cached_ids_files() == [entry]
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == stamp  # not encoded again
    assert second.sha256 == first.sha256 and second.vocab == first.vocab

    text = small_corpus.read_text(encoding="utf-8") + "Zounds! A new line.\n"
    small_corpus.write_text(text, encoding="utf-8")
    changed = load_corpus(str(small_corpus))
    (new_entry,) = _cached_ids_files()  # the stale entry of the same file was removed
    assert new_entry != entry
    np.testing.assert_array_equal(changed.ids, Vocab.from_text(text).encode(text))
    assert changed.sha256 == text_sha256(text)


def test_a_folder_streams_like_the_joined_text(tmp_path):
    (tmp_path / "b.txt").write_text("second — no newline", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("", encoding="utf-8")
    (tmp_path / "d.txt").write_text("ünter", encoding="utf-8")
    text = "first\nsecond — no newline\nünter\n"
    corpus = load_corpus(str(tmp_path))
    np.testing.assert_array_equal(corpus.ids, Vocab.from_text(text).encode(text))
    assert corpus.sha256 == text_sha256(text)


@pytest.mark.parametrize("chunk_bytes", [3, 64, 1 << 20])
def test_invalid_utf8_names_the_byte_offset_across_chunks(tmp_path, chunk_bytes):
    good = ("ab—" * 40).encode("utf-8")  # 200 bytes, with 3-byte characters
    path = tmp_path / "bad.txt"
    path.write_bytes(good + b"\xff" + good)
    with pytest.raises(CharRNNError, match=r"byte offset 200 \(0xff\)"):
        _encode(path, chunk_bytes)
    # A character cut off by the end of the file.
    path.write_bytes(good + "—".encode()[:2])
    with pytest.raises(CharRNNError, match=r"byte offset 200 \(0xe2\)"):
        _encode(path, chunk_bytes)
    with pytest.raises(CharRNNError, match=r"byte offset 200 \(0xe2\)"):
        load_corpus(str(path))


def test_other_encodings_stream_too(tmp_path):
    text = "café au lait, crème brûlée\n" * 50
    path = tmp_path / "latin.txt"
    path.write_bytes(text.encode("latin-1"))
    encoded = _encode(path, chunk_bytes=7, encoding="latin-1")
    np.testing.assert_array_equal(encoded.ids, Vocab.from_text(text).encode(text))
    assert encoded.sha256 == text_sha256(text)


def test_batches_read_the_memory_map_without_loading_it(small_corpus):
    corpus = load_corpus(str(small_corpus))
    train_ids, val_ids = corpus.split(0.1)
    assert np.shares_memory(val_ids, corpus.ids)
    stateful = StatefulBatches(train_ids, batch_size=8, seq_length=32)
    assert np.shares_memory(stateful.streams, corpus.ids)  # a view, not a copy
    x, y = stateful.get(0, 3)
    assert x.shape == (8, 32) and (x[:, 1:] == y[:, :-1]).all()
    x, y = ShuffledBatches(train_ids, batch_size=8, seq_length=32, seed=0).get(0, 0)
    assert x.shape == (8, 32) and (x[:, 1:] == y[:, :-1]).all()
