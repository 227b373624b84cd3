"""Does a sample copy its training text? The longest span it shares with it, and for items
whether the item is one of the training items.

The run's training text (the part training read: the text before the validation tail, or
the training items, each followed by a separator) is indexed once by a suffix array
(pydivsufsort, the `novelty` extra) and kept in RUN/novelty/ beside the ids it indexes, so
later calls only memory-map it: a corpus of gigabytes never becomes a Python string, and
a search reads a few dozen places of the index. The index is rebuilt when the corpus or
the split it was built for changes.

The longest shared span of a sample is found with two pointers: for each start, the end
moves on while the span still occurs, which costs two searches per character.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.corpus import load_corpus
from .data.items import Items, find_items, split_items
from .data.vocab import Vocab
from .errors import CharRNNError, require_extra
from .run.folder import NOVELTY_DIR, RunFolder, SavedRun
from .run.storage import read_json, write_atomic_with, write_json

INDEX_FILE, TEXT_FILE, SUFFIXES_FILE, ITEM_HASHES_FILE = "index.json", "text.npy", "suffixes.npy", "items.npy"
INDEX_VERSION = 1
COPY_CHUNK = 1 << 24


@dataclass(frozen=True)
class Novelty:
    """What a sample shares with the training text."""

    longest_copy: str  # the longest span of the sample found in the training text
    in_training: bool | None  # for items: whether the whole item is a training item

    def as_dict(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"longest_copy": len(self.longest_copy), "copied": self.longest_copy}
        if self.in_training is not None:
            figures["in_training"] = self.in_training
        return figures


class CopyIndex:
    """A suffix array of a run's training text, with the hashes of its training items."""

    def __init__(self, folder: Path, vocab: Vocab, text: np.ndarray, suffixes: np.ndarray, items: np.ndarray):
        self.folder = folder
        self.vocab = vocab  # the corpus's own characters, as the indexed ids encode them
        self.text = text
        self.suffixes = suffixes
        self.item_hashes = items  # sorted; empty for a run on one text

    @classmethod
    def for_run(cls, run: str | Path) -> CopyIndex:
        """The run's index, built first if it is missing or stale."""
        folder = RunFolder(run)
        saved = folder.open()
        key = _index_key(saved)
        index_folder = folder.path / NOVELTY_DIR
        index_file = index_folder / INDEX_FILE
        if not index_file.is_file() or read_json(index_file, "novelty index").get("key") != key:
            build_index(saved, index_folder, key)
        vocab = Vocab.from_json(read_json(index_file, "novelty index")["vocab"])

        def load(name: str) -> np.ndarray:
            # Copy-on-write maps: searches only read, and the file is never written back.
            return np.load(index_folder / name, mmap_mode="c", allow_pickle=False)

        return cls(index_folder, vocab, load(TEXT_FILE), load(SUFFIXES_FILE), load(ITEM_HASHES_FILE))

    # ---- queries ----

    def novelty(self, sample: str, *, item: bool = False) -> Novelty:
        in_training = self.has_item(sample) if item else None
        return Novelty(self.longest_copy(sample), in_training)

    def has_item(self, item: str) -> bool:
        if self.vocab.unknown(item) or len(self.item_hashes) == 0:
            return False
        digest = _hash(self.vocab.encode(item).astype(self.text.dtype))
        at = int(np.searchsorted(self.item_hashes, digest))
        return at < len(self.item_hashes) and int(self.item_hashes[at]) == digest

    def longest_copy(self, sample: str) -> str:
        best = (0, 0)
        start = 0
        for piece in _known_pieces(sample, self.vocab):
            ids = self.vocab.encode(piece).astype(self.text.dtype)
            lo, hi = self._longest(ids)
            if hi - lo > best[1] - best[0]:
                best = (start + lo, start + hi)
            start += len(piece) + 1
        return sample[best[0] : best[1]]

    def _longest(self, ids: np.ndarray) -> tuple[int, int]:
        best, end = (0, 0), 0
        for begin in range(len(ids)):
            end = max(end, begin)
            while end < len(ids) and self.occurs(ids[begin : end + 1]):
                end += 1
            if end - begin > best[1] - best[0]:
                best = (begin, end)
        return best

    def occurs(self, pattern: np.ndarray) -> bool:
        """Whether `pattern` (ids) occurs in the text: the first suffix not below it starts with it."""
        lo, hi, m = 0, len(self.suffixes), len(pattern)
        while lo < hi:
            mid = (lo + hi) // 2
            if _below(self.text, int(self.suffixes[mid]), pattern):
                lo = mid + 1
            else:
                hi = mid
        if lo == len(self.suffixes):
            return False
        at = int(self.suffixes[lo])
        return np.array_equal(self.text[at : at + m], pattern)


def _below(text: np.ndarray, at: int, pattern: np.ndarray) -> bool:
    """Whether the suffix text[at:] sorts before `pattern`."""
    head = text[at : at + len(pattern)]
    differ = np.flatnonzero(head != pattern[: len(head)])
    if len(differ):
        return bool(head[differ[0]] < pattern[differ[0]])
    return len(head) < len(pattern)


def _known_pieces(sample: str, vocab: Vocab) -> list[str]:
    """The sample cut at characters the training text lacks (no span crosses them)."""
    pieces, current = [], []
    for ch in sample:
        if ch in vocab:
            current.append(ch)
        else:
            pieces.append("".join(current))
            current = []
    pieces.append("".join(current))
    return pieces


def _hash(ids: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(ids.tobytes(), digest_size=8).digest(), "little")


def _index_key(saved: SavedRun) -> dict[str, Any]:
    train = saved.train
    return {
        "version": INDEX_VERSION,
        "sha256": saved.corpus.get("sha256"),
        "items": train.get("items"),
        "val_fraction": train.get("val_fraction"),
        "seed": train.get("seed"),
    }


def build_index(saved: SavedRun, folder: Path, key: dict[str, Any]) -> None:
    """Write RUN/novelty/: the training text's ids, their suffix array, the items' hashes."""
    divsufsort = require_extra("novelty", "pydivsufsort", "the novelty index").divsufsort
    train = saved.train
    data, encoding = train.get("data", "shakespeare"), train.get("encoding", "utf-8")
    source = saved.corpus.get("source")
    if source and Path(source).exists():
        data = source
    corpus = load_corpus(str(data), encoding)
    if corpus.sha256 != saved.corpus.get("sha256"):
        raise CharRNNError(
            f"{corpus.source} is no longer the text this run was trained on (its sha256 differs): "
            "the novelty index needs the training text"
        )
    folder.mkdir(parents=True, exist_ok=True)
    text_path = folder / TEXT_FILE
    hashes = np.zeros(0, dtype=np.uint64)
    if train.get("items"):
        items = find_items(corpus.ids, corpus.vocab, train["items"])
        training, _ = split_items(items, float(train.get("val_fraction", 0.1)), int(train.get("seed", 0)))
        hashes = _write_items(training, len(corpus.vocab), text_path)
    else:
        cut = len(corpus) - int(len(corpus) * float(train.get("val_fraction", 0.1)))
        _write_ids(corpus.ids, cut, corpus.vocab.id_dtype, text_path)
    text = np.load(text_path, mmap_mode="r+", allow_pickle=False)
    if len(text) == 0:
        raise CharRNNError("the run's training text is empty: nothing to compare samples with")
    suffixes = divsufsort(text)
    write_atomic_with(folder / SUFFIXES_FILE, lambda f: np.save(f, suffixes, allow_pickle=False))
    write_atomic_with(folder / ITEM_HASHES_FILE, lambda f: np.save(f, np.sort(hashes), allow_pickle=False))
    write_json(folder / INDEX_FILE, {"key": key, "vocab": list(corpus.vocab.chars), "chars": len(text)})


def _write_ids(ids: np.ndarray, length: int, dtype: np.dtype, path: Path) -> None:
    """The first `length` ids into an .npy file, a chunk at a time."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))
    for lo in range(0, length, COPY_CHUNK):
        out[lo : min(lo + COPY_CHUNK, length)] = ids[lo : min(lo + COPY_CHUNK, length)]
    out.flush()
    del out


def _write_items(items: Items, separator: int, path: Path) -> np.ndarray:
    """The items one after another, each followed by `separator` (an id no character has, so
    no span crosses an item's end), and the hash of each item."""
    dtype = Vocab(chr(c) for c in range(separator + 1)).id_dtype
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(items.predictions,))
    hashes = np.empty(len(items), dtype=np.uint64)
    at = 0
    for index in range(len(items)):
        chars = items.item(index).astype(dtype)
        out[at : at + len(chars)] = chars
        out[at + len(chars)] = separator
        at += len(chars) + 1
        hashes[index] = _hash(chars)
    out.flush()
    del out
    return hashes
