"""Text in, ids out: a file, a folder of files, or the `shakespeare` download.

Every corpus is read through its encoded, cached, memory-mapped id file (encoded.py,
which streams the text through text.py), so that a corpus of many gigabytes never sits
in memory, for training and evaluation alike. The train/validation split is decided
here, once, for both.

`shakespeare` is looked up in the folder named by CHAR_RNN_DATA, then in the
user cache, and only then downloaded from the seed tutorial's URL; the download
is checked against its sha256 before it is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CharRNNError, UsageError
from ..run.storage import sha256_file
from .encoded import encode_text
from .text import TextFiles, folder_files
from .vocab import Vocab, describe_char

SHAKESPEARE_URL = "https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "shakespeare.txt"
DATA_ENV = "CHAR_RNN_DATA"
URL_ENV = "CHAR_RNN_SHAKESPEARE_URL"  # a mirror of the same file (its sha256 is still checked)
SPLITS = ("all", "train", "val")


class MappedIds:
    """Ids of one vocabulary read as the ids of another (`table[id]`), translated slice by
    slice as they are read: a memory-mapped corpus is never copied whole. Slicing gives
    another view; numpy reads one through `__array__`."""

    def __init__(self, ids: np.ndarray, table: np.ndarray):
        self.ids = ids
        self.table = table

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return MappedIds(self.ids[index], self.table)
        return self.table[self.ids[index]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        mapped = self.table[np.asarray(self.ids)]
        return mapped if dtype is None else mapped.astype(dtype, copy=False)


@dataclass(frozen=True)
class Corpus:
    """A whole text as ids, with the vocabulary that encodes it."""

    ids: np.ndarray | MappedIds
    vocab: Vocab
    sha256: str
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """The last `val_fraction` of the text is validation, the rest training."""
        n_val = int(len(self.ids) * val_fraction)
        cut = len(self.ids) - n_val
        return self.ids[:cut], self.ids[cut:]

    def part(self, split: str, val_fraction: float) -> np.ndarray:
        """The ids of one of SPLITS: "all" of the text, or the "train" or "val" part that
        `split(val_fraction)` gives training."""
        if split not in SPLITS:
            raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split == "all":
            return self.ids
        train, val = self.split(val_fraction)
        return train if split == "train" else val


def shakespeare_path() -> Path:
    """The verified tiny-Shakespeare file: local folder, then cache, then download."""
    folder = os.environ.get(DATA_ENV)
    if folder:
        candidate = Path(folder) / SHAKESPEARE_FILE
        if candidate.is_file():
            if sha256_file(candidate) != SHAKESPEARE_SHA256:
                raise CharRNNError(
                    f"{candidate} does not match the expected sha256 of tiny Shakespeare; "
                    f"remove it or unset {DATA_ENV}"
                )
            return candidate
    import pooch  # only needed when the file is not already local
    from filelock import FileLock

    pooch.get_logger().setLevel("WARNING")
    url = os.environ.get(URL_ENV) or SHAKESPEARE_URL
    cache = Path(pooch.os_cache("char-rnn"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # pooch verifies a download before moving it into place, but two processes would
        # still both download it; the lock makes the second one wait and reuse the file.
        with FileLock(cache / f"{SHAKESPEARE_FILE}.lock", timeout=600):
            return Path(
                pooch.retrieve(
                    url,
                    known_hash=f"sha256:{SHAKESPEARE_SHA256}",
                    fname=SHAKESPEARE_FILE,
                    path=cache,
                    progressbar=False,
                )
            )
    except Exception as error:  # network failures come in many types
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise CharRNNError(
            f"could not download tiny Shakespeare from {url} ({reason}); "
            f"to use a local copy, set {DATA_ENV} to a folder holding {SHAKESPEARE_FILE}, "
            "or pass --data FILE"
        ) from None


def corpus_files(data: str, encoding: str = "utf-8") -> TextFiles:
    """The files a corpus name stands for: a file, a folder's files, or `shakespeare`."""
    if data == "shakespeare" and not Path(data).exists():
        path = shakespeare_path()
        return TextFiles([path], "utf-8", str(path), join_lines=False)
    path = Path(data).expanduser()
    if path.is_dir():
        return TextFiles(folder_files(path), encoding, str(path.resolve()), join_lines=True)
    if not path.exists():
        raise CharRNNError(f"corpus {data} does not exist (give a text file, a folder, or 'shakespeare')")
    return TextFiles([path], encoding, str(path.resolve()), join_lines=False)


def load_corpus(
    data: str,
    encoding: str = "utf-8",
    vocab: Vocab | None = None,
    *,
    extend: Iterable[str] = (),
    reserved: str = "",
) -> Corpus:
    """Encode a corpus (or reuse its cached encoding). With `vocab` (a model's), the corpus
    must use only that vocabulary's characters, and its ids are that vocabulary's: the
    memory map itself when the vocabularies are equal, else translated as they are read.

    Without `vocab`, the vocabulary is the text's characters with `extend` (a vocabulary to
    keep, as a fine-tuned run keeps its origin's) and `reserved`: symbols of the model's own,
    such as the item mark, which the text must not contain."""
    text = corpus_files(data, encoding)
    encoded = encode_text(text)
    clashes = [ch for ch in reserved if ch in encoded.vocab]
    if clashes:
        raise CharRNNError(
            f"corpus {text.source} contains {describe_char(clashes[0])}, which the model reserves "
            "as a symbol of its own (the mark where an item ends); remove it from the text"
        )
    extend = set(extend) | set(reserved)
    if vocab is None and not extend <= set(encoded.vocab.chars):
        vocab = Vocab(set(encoded.vocab.chars) | extend)
    ids: np.ndarray | MappedIds = encoded.ids
    if vocab is not None and vocab != encoded.vocab:
        chars = "".join(encoded.vocab.chars)
        vocab.check(chars, what=f"corpus {text.source}")
        ids = MappedIds(encoded.ids, vocab.encode(chars))
    return Corpus(ids=ids, vocab=vocab or encoded.vocab, sha256=encoded.sha256, source=text.source)
