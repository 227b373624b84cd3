import numpy as np
import pytest

from char_rnn.data.corpus import SHAKESPEARE_SHA256, load_corpus, shakespeare_path
from char_rnn.errors import CharRNNError
from char_rnn.run.storage import sha256_file


def test_shakespeare_comes_from_the_local_folder_and_matches_the_tutorial(shakespeare_text):
    path = shakespeare_path()
    assert sha256_file(path) == SHAKESPEARE_SHA256
    corpus = load_corpus("shakespeare")
    assert len(corpus) == 1_115_394
    assert len(corpus.vocab) == 65


def test_a_tampered_local_copy_is_refused(tmp_path, monkeypatch):
    (tmp_path / "shakespeare.txt").write_text("not shakespeare")
    monkeypatch.setenv("CHAR_RNN_DATA", str(tmp_path))
    with pytest.raises(CharRNNError, match="sha256"):
        shakespeare_path()


def test_folder_is_read_in_sorted_order_and_joined(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / ".hidden").write_text("never")
    corpus = load_corpus(str(tmp_path))
    assert corpus.vocab.decode(corpus.ids) == "first\nsecond\n"


def test_non_utf8_names_the_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CharRNNError, match="byte offset 3"):
        load_corpus(str(path))
    corpus = load_corpus(str(path), encoding="latin-1")
    assert corpus.vocab.decode(corpus.ids) == "café au lait"


def test_unknown_encoding_is_a_usage_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("abc")
    with pytest.raises(ValueError, match="unknown encoding"):
        load_corpus(str(path), encoding="no-such-codec")


def _make(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing.txt"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    path = tmp_path / "file"
    path.write_bytes(b"\x00\x01\x02" if kind == "binary" else b"")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("empty folder", "holds no text files"),
        ("binary", "binary"),
        ("empty file", "is empty"),
    ],
)
def test_bad_corpora_give_clear_errors(tmp_path, kind, message):
    with pytest.raises(CharRNNError, match=message):
        load_corpus(str(_make(tmp_path, kind)))


def test_split_holds_out_the_last_fraction(small_corpus):
    corpus = load_corpus(str(small_corpus))
    train, val = corpus.split(0.1)
    assert len(val) == 3000 and len(train) == 27000
    assert (val == corpus.ids[-3000:]).all()
    train, val = corpus.split(0.0)
    assert len(val) == 0 and len(train) == len(corpus)


def test_a_model_vocabulary_maps_the_ids_and_keeps_the_memory_map(small_corpus):
    from char_rnn.data.vocab import Vocab

    same = load_corpus(str(small_corpus))
    assert isinstance(load_corpus(str(small_corpus), vocab=same.vocab).ids, np.memmap)
    text = small_corpus.read_text(encoding="utf-8")
    wider = Vocab(set(text) | set("Ωλ"))
    corpus = load_corpus(str(small_corpus), vocab=wider)
    assert corpus.vocab == wider and len(corpus) == len(text)
    np.testing.assert_array_equal(np.asarray(corpus.ids), wider.encode(text))
    train, val = corpus.split(0.1)
    np.testing.assert_array_equal(np.asarray(val[10:20]), wider.encode(text[27_010:27_020]))
    assert len(corpus.part("train", 0.1)) == len(train) and len(corpus.part("all", 0.1)) == len(text)
