"""A corpus encoded once into a file of ids, cached, and read through a memory map.

The text never sits in memory whole: files are read in chunks of a few megabytes and
decoded incrementally (a character split between two chunks is joined by the
decoder), in two streaming passes:

    pass 1  the vocabulary (the set of characters) and the sha256 of the text
    pass 2  the ids, written as uint8 when the vocabulary has at most 256 characters,
            else uint16 or uint32

Reading the text twice costs less than the alternative, provisional ids rewritten once
the vocabulary is known, which needs the id file twice on disk. A chunk that is pure
ASCII in an ASCII-compatible encoding is not decoded at all: its bytes are its code
points. The sha256 is that of the text encoded as UTF-8 (for a UTF-8 file, its bytes).

The id file lives in a cache folder ($CHAR_RNN_CACHE, else the user cache) under a
name made of the corpus identity: which files (resolved paths, encoding) and which
version of them (size, mtime, and a digest of the first and last megabyte of each).
An unchanged corpus is memory-mapped without reading the text again; a changed one
gets a new entry, and the stale entry of the same files is removed. An entry's JSON
(vocabulary, sha256, length) is written after its id file and is what makes it valid.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CharRNNError, UsageError
from ..run.storage import write_atomic_with
from .vocab import Vocab

CACHE_ENV = "CHAR_RNN_CACHE"
FORMAT_VERSION = 1
CHUNK_BYTES = 16 << 20
FINGERPRINT_BYTES = 1 << 20
BINARY_PROBE_BYTES = 65536
# Codecs in which a byte below 0x80 always decodes to that ASCII character.
_ASCII_COMPATIBLE = {"utf-8", "utf-8-sig", "ascii", "iso8859-1", "cp1252"}
_UNICODE_SIZE = 0x110000


@dataclass(frozen=True)
class EncodedText:
    """The ids of a whole corpus (a read-only memory map), its vocabulary and sha256."""

    ids: np.ndarray
    vocab: Vocab
    sha256: str
    path: Path


# ---- the error contract, shared with the in-memory reader in corpus.py ---------------


def looks_binary(head: bytes, encoding: str) -> bool:
    """NUL bytes near the start mean a binary file, unless the encoding is UTF-16/32."""
    return b"\x00" in head[:BINARY_PROBE_BYTES] and "16" not in encoding and "32" not in encoding


def binary_error(path: Path) -> CharRNNError:
    return CharRNNError(f"{path} looks like a binary file (it contains NUL bytes), not text")


def undecodable_error(path: Path, encoding: str, offset: int, byte: int) -> CharRNNError:
    hint = "; pass --encoding to read another encoding" if encoding == "utf-8" else ""
    return CharRNNError(
        f"{path} is not valid {encoding}: byte offset {offset} (0x{byte:02x}) cannot be decoded{hint}"
    )


def incremental_decoder(encoding: str) -> codecs.IncrementalDecoder:
    try:
        return codecs.getincrementaldecoder(encoding)()
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None


# ---- streaming code points ----------------------------------------------------------------


def _held_back(decoder: codecs.IncrementalDecoder) -> bytes:
    """The bytes of a character the decoder has begun but not finished."""
    state = decoder.getstate()
    return state[0] if isinstance(state, tuple) else b""


def code_points(text: str) -> np.ndarray:
    """The code points of `text` through the fastest exact route (CPython encodes to
    latin-1 and UTF-16 far faster than to UTF-32)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), np.uint8)
    wide = text.encode("utf-16-le", "surrogatepass")
    if len(wide) == 2 * len(text):  # no surrogate pairs: one code unit per character
        return np.frombuffer(wide, np.uint16)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _file_code_points(
    path: Path, encoding: str, chunk_bytes: int, digest, end_line: bool
) -> Iterator[np.ndarray]:
    decoder = incremental_decoder(encoding)
    name = codecs.lookup(encoding).name
    ascii_compatible, utf8 = name in _ASCII_COMPATIBLE, name == "utf-8"
    offset, last = 0, None
    try:
        with open(path, "rb") as f:
            if looks_binary(f.read(BINARY_PROBE_BYTES), encoding):
                raise binary_error(path)
            f.seek(0)
            if not (utf8 and f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8):
                f.seek(0)  # a UTF-8 byte order mark is a marker, not text: skip it
            offset = f.tell()
            while True:
                raw = f.read(chunk_bytes)
                if raw and ascii_compatible and raw.isascii() and decoder.getstate() in ((b"", 0), 0):
                    codes, utf8_bytes = np.frombuffer(raw, np.uint8), raw
                else:
                    held = _held_back(decoder)
                    try:
                        text = decoder.decode(raw, final=not raw)
                    except UnicodeDecodeError as error:
                        data = held + raw
                        where = offset - len(held) + error.start
                        raise undecodable_error(path, encoding, where, data[error.start]) from None
                    except UnicodeError as error:  # e.g. UTF-16 without its byte order mark
                        raise CharRNNError(f"{path} is not valid {encoding}: {error}") from None
                    codes = code_points(text)
                    utf8_bytes = raw if utf8 else text.encode("utf-8", "surrogatepass")
                if digest is not None:
                    digest.update(utf8_bytes)
                if len(codes):
                    last = int(codes[-1])
                    yield codes
                if not raw:
                    break
                offset += len(raw)
    except OSError as error:
        raise CharRNNError(f"cannot read {path}: {error.strerror}") from None
    if end_line and last is not None and last != ord("\n"):
        # A file that does not end a line should not run into the next one.
        if digest is not None:
            digest.update(b"\n")
        yield np.array([ord("\n")], np.uint8)


def stream_code_points(
    files: list[Path], encoding: str, *, join_lines: bool, chunk_bytes: int = CHUNK_BYTES, digest=None
) -> Iterator[np.ndarray]:
    """The code points of the files' text in order, chunk by chunk; `digest` (a hashlib
    object) is fed the text as UTF-8 on the way."""
    for path in files:
        yield from _file_code_points(path, encoding, chunk_bytes, digest, end_line=join_lines)


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


def encode_files(
    files: list[Path],
    encoding: str,
    *,
    join_lines: bool,
    source: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> EncodedText:
    """The cached ids of the files' text, encoding them first when the cache has no
    entry for this version of them. `source` names the corpus in messages."""
    incremental_decoder(encoding)  # an unknown encoding is a usage error before any work
    folder = cache_folder()
    which, version = corpus_identity(files, encoding, join_lines)
    ids_path = folder / f"{which}-{version}.ids"
    cached = _open_entry(ids_path)
    if cached is not None:
        return cached

    def chunks(digest=None) -> Iterator[np.ndarray]:
        return stream_code_points(
            files, encoding, join_lines=join_lines, chunk_bytes=chunk_bytes, digest=digest
        )

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
