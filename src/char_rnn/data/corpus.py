"""Text in, ids out: a file, a folder of files, or the `shakespeare` download.

Training reads the ids of the whole corpus from an encoded, cached, memory-mapped id
file (see encoded.py), so that a corpus of many gigabytes never sits in memory;
`read_text` gives the text itself, for evaluation and sampling on moderate texts.

`shakespeare` is looked up in the folder named by CHAR_RNN_DATA, then in the
user cache, and only then downloaded from the seed tutorial's URL; the download
is checked against its sha256 before it is used.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CharRNNError, UsageError
from ..run.storage import sha256_file
from .encoded import binary_error, encode_files, looks_binary, undecodable_error
from .vocab import Vocab

SHAKESPEARE_URL = "https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "shakespeare.txt"
DATA_ENV = "CHAR_RNN_DATA"
URL_ENV = "CHAR_RNN_SHAKESPEARE_URL"  # a mirror of the same file (its sha256 is still checked)


@dataclass(frozen=True)
class Corpus:
    """A whole text as ids, with the vocabulary that encodes it."""

    ids: np.ndarray
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


def decode_bytes(raw: bytes, path: Path, encoding: str) -> str:
    """Strict decoding, never the locale's; a UTF-8 byte order mark is dropped."""
    try:
        skip = len(codecs.BOM_UTF8) if codecs.lookup(encoding).name == "utf-8" and raw.startswith(
            codecs.BOM_UTF8) else 0  # fmt: skip
        return raw[skip:].decode(encoding)
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as error:
        offset = skip + error.start
        raise undecodable_error(path, encoding, offset, raw[offset]) from None


def read_file(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CharRNNError(f"cannot read {path}: {error.strerror}") from None
    if looks_binary(raw, encoding):
        raise binary_error(path)
    return decode_bytes(raw, path, encoding)


def text_files(folder: Path) -> list[Path]:
    """Every visible regular file under `folder`, in sorted path order."""
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise CharRNNError(f"folder {folder} holds no text files")
    return files


@dataclass(frozen=True)
class CorpusFiles:
    """The files a corpus is made of, read in this order and with this encoding. A
    folder's files are joined with a newline after each one that does not end a line."""

    files: list[Path]
    encoding: str
    source: str
    is_folder: bool


def corpus_files(data: str, encoding: str = "utf-8") -> CorpusFiles:
    if data == "shakespeare" and not Path(data).exists():
        path = shakespeare_path()
        return CorpusFiles([path], "utf-8", str(path), is_folder=False)
    path = Path(data).expanduser()
    if path.is_dir():
        return CorpusFiles(text_files(path), encoding, str(path.resolve()), is_folder=True)
    if not path.exists():
        raise CharRNNError(f"corpus {data} does not exist (give a text file, a folder, or 'shakespeare')")
    return CorpusFiles([path], encoding, str(path.resolve()), is_folder=False)


def read_text(data: str, encoding: str = "utf-8") -> tuple[str, str]:
    """The whole corpus as one string, and where it came from."""
    corpus = corpus_files(data, encoding)
    parts = [read_file(p, corpus.encoding) for p in corpus.files]
    if corpus.is_folder:
        # A file that does not end a line should not run into the next one.
        parts = [p if p.endswith("\n") or not p else p + "\n" for p in parts]
    return "".join(parts), corpus.source


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_corpus(data: str, encoding: str = "utf-8", vocab: Vocab | None = None) -> Corpus:
    """Encode a corpus (or reuse its cached encoding); with `vocab`, it must use only that
    vocabulary's characters, and its ids are that vocabulary's (then held in memory)."""
    where = corpus_files(data, encoding)
    encoded = encode_files(where.files, where.encoding, join_lines=where.is_folder, source=where.source)
    ids = encoded.ids
    if vocab is not None and vocab != encoded.vocab:
        vocab.check("".join(encoded.vocab.chars), what=f"corpus {where.source}")
        ids = vocab.encode("".join(encoded.vocab.chars))[ids]
    return Corpus(ids=ids, vocab=vocab or encoded.vocab, sha256=encoded.sha256, source=where.source)
