"""A corpus encoded once into a file of ids, cached, and read through a memory map.

The text never sits in memory whole: it is read as a stream of code points (text.py),
in two streaming passes:

    pass 1  the vocabulary (the set of characters) and the sha256 of the text
    pass 2  the ids, written as uint8 when the vocabulary has at most 256 characters,
            else uint16 or uint32

Reading the text twice costs less than the alternative, provisional ids rewritten once
the vocabulary is known, which needs the id file twice on disk. The sha256 is that of
the text encoded as UTF-8 (for a UTF-8 file, its bytes).

The id file lives in a cache folder ($CHAR_RNN_CACHE, else the user cache) under a
name made of the corpus identity: which files (resolved paths, encoding) and which
version of them (size, mtime, and a digest of the first and last megabyte of each).
An unchanged corpus is memory-mapped without reading the text again; a changed one
gets a new entry, and the stale entry of the same files is removed. An entry's JSON
(vocabulary, sha256, length) is written after its id file and is what makes it valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CharRNNError
from ..run.storage import write_atomic_with
from .text import CHUNK_BYTES, TextFiles, check_encoding
from .vocab import Vocab

CACHE_ENV = "CHAR_RNN_CACHE"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 1 << 20
_UNICODE_SIZE = 0x110000


@dataclass(frozen=True)
class EncodedText:
    """The ids of a whole corpus (a read-only memory map), its vocabulary and sha256."""

    ids: np.ndarray
    vocab: Vocab
    sha256: str
    path: Path


# ---- the two passes -------------------------------------------------------------------


def _scan(chunks: Iterator[np.ndarray]) -> tuple[Vocab | None, int]:
    """Pass 1: the set of characters and the number of them."""
    seen = np.zeros(_UNICODE_SIZE, dtype=bool)
    seen_bytes = bytearray(256)  # 1 for a byte value not seen yet, for bytes.translate
    seen_bytes[:] = b"\x01" * 256
    length = 0
    for codes in chunks:
        length += len(codes)
        if codes.dtype == np.uint8:
            new = b"\x01" in codes.tobytes().translate(seen_bytes)
        else:
            new = not seen[codes].all()
        if new:
            seen[codes] = True
            for c in np.flatnonzero(seen[:256]):
                seen_bytes[c] = 0
    chars = [chr(c) for c in np.flatnonzero(seen)]
    return (Vocab(chars) if chars else None), length


def _write_ids(chunks: Iterator[np.ndarray], vocab: Vocab, out) -> int:
    """Pass 2: every chunk's ids, appended to the open file `out`; returns how many."""
    codes_of_vocab = np.array([ord(c) for c in vocab.chars], dtype=np.int64)
    table = np.zeros(int(codes_of_vocab[-1]) + 1, dtype=vocab.id_dtype)
    table[codes_of_vocab] = np.arange(len(vocab))
    byte_table = bytes(table[:256].astype(np.uint8)) + bytes(max(0, 256 - len(table)))
    small = vocab.id_dtype == np.uint8
    written = 0
    for codes in chunks:
        if small and codes.dtype == np.uint8:
            out.write(codes.tobytes().translate(byte_table))  # 256-entry lookup, C speed
        else:
            if int(codes.max()) >= len(table):
                raise IndexError("a character outside the vocabulary")
            out.write(table[codes].data)
        written += len(codes)
    return written


# ---- the cache ------------------------------------------------------------------------


def cache_folder() -> Path:
    folder = os.environ.get(CACHE_ENV)
    if folder:
        return Path(folder).expanduser()
    import pooch  # its user-cache location is the one the Shakespeare download uses

    return Path(pooch.os_cache("char-rnn")) / "encoded"


def corpus_identity(files: list[Path], encoding: str, join_lines: bool) -> tuple[str, str]:
    """(which files, which version of them) as two short hex digests."""
    which = json.dumps([FORMAT_VERSION, encoding, join_lines, [str(p.resolve()) for p in files]])
    version = hashlib.sha256()
    for path in files:
        try:
            status = path.stat()
            with open(path, "rb") as f:
                version.update(f"{status.st_size}:{status.st_mtime_ns}:".encode())
                version.update(f.read(FINGERPRINT_BYTES))
                f.seek(max(status.st_size - FINGERPRINT_BYTES, 0))
                version.update(f.read(FINGERPRINT_BYTES))
        except OSError as error:
            raise CharRNNError(f"cannot read {path}: {error.strerror}") from None
    return hashlib.sha256(which.encode()).hexdigest()[:16], version.hexdigest()[:16]


def _open_entry(ids_path: Path) -> EncodedText | None:
    """The cached entry, or None when it is missing or incomplete."""
    try:
        meta = json.loads(ids_path.with_suffix(".json").read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        if (
            meta["format_version"] != FORMAT_VERSION
            or ids_path.stat().st_size != meta["length"] * dtype.itemsize
        ):
            return None
        ids = np.memmap(ids_path, dtype=dtype, mode="r", shape=(meta["length"],))
        return EncodedText(ids=ids, vocab=Vocab(meta["vocab"]), sha256=meta["sha256"], path=ids_path)
    except (OSError, ValueError, KeyError, TypeError, CharRNNError):
        return None


def encode_text(text: TextFiles, *, chunk_bytes: int = CHUNK_BYTES) -> EncodedText:
    """The cached ids of the text, encoding it first when the cache has no entry for this
    version of its files."""
    check_encoding(text.encoding)  # an unknown encoding is a usage error before any work
    files, encoding, join_lines, source = text.files, text.encoding, text.join_lines, text.source
    folder = cache_folder()
    which, version = corpus_identity(files, encoding, join_lines)
    ids_path = folder / f"{which}-{version}.ids"
    cached = _open_entry(ids_path)
    if cached is not None:
        return cached

    def chunks(digest=None) -> Iterator[np.ndarray]:
        return text.code_points(chunk_bytes=chunk_bytes, digest=digest)

    digest = hashlib.sha256()
    vocab, length = _scan(chunks(digest))
    if vocab is None:
        raise CharRNNError(f"corpus {source} is empty")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written: list[int] = []
        write_atomic_with(ids_path, lambda f: written.append(_write_ids(chunks(), vocab, f)))
    except OSError as error:
        raise CharRNNError(
            f"cannot write the encoded corpus to {folder} ({error.strerror}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    except IndexError:
        written = [-1]
    if written != [length] or corpus_identity(files, encoding, join_lines)[1] != version:
        ids_path.unlink(missing_ok=True)
        raise CharRNNError(f"corpus {source} changed while it was being encoded; try again")
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "files": [str(p) for p in files],
        "encoding": encoding,
        "length": length,
        "dtype": vocab.id_dtype.name,
        "sha256": digest.hexdigest(),
        "vocab": list(vocab.chars),
    }
    payload = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    write_atomic_with(ids_path.with_suffix(".json"), lambda f: f.write(payload))
    for stale in folder.glob(f"{which}-*"):
        if not stale.name.startswith(f"{which}-{version}."):
            stale.unlink(missing_ok=True)
    entry = _open_entry(ids_path)
    if entry is None:
        raise CharRNNError(f"the encoded corpus in {folder} could not be read back; try again")
    return entry
