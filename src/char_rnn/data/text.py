"""Text files read as a stream of code points: the one reader of every corpus.

Files are read in chunks of a few megabytes and decoded incrementally (a character
split between two chunks is joined by the decoder), strictly and never in the locale's
encoding. A UTF-8 byte order mark is a marker, not text, and is skipped. NUL bytes near
the start mean a binary file. A folder's files are read in sorted path order, with a
newline after each one that does not end a line, so that it does not run into the next.

A chunk that is pure ASCII in an ASCII-compatible encoding is not decoded at all: its
bytes are its code points.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CharRNNError, UsageError

CHUNK_BYTES = 16 << 20
BINARY_PROBE_BYTES = 65536
# Codecs in which a byte below 0x80 always decodes to that ASCII character.
_ASCII_COMPATIBLE = {"utf-8", "utf-8-sig", "ascii", "iso8859-1", "cp1252"}


@dataclass(frozen=True)
class TextFiles:
    """The files a text is made of, read in this order and with this encoding; `source`
    names the text in messages. With `join_lines`, a file that does not end a line is
    followed by a newline (a folder's files)."""

    files: list[Path]
    encoding: str
    source: str
    join_lines: bool

    def code_points(self, *, chunk_bytes: int = CHUNK_BYTES, digest=None) -> Iterator[np.ndarray]:
        """The code points of the text in order, chunk by chunk; `digest` (a hashlib
        object) is fed the text as UTF-8 on the way."""
        check_encoding(self.encoding)
        for path in self.files:
            yield from _file_code_points(path, self.encoding, chunk_bytes, digest, self.join_lines)


def folder_files(folder: Path) -> list[Path]:
    """Every visible regular file under `folder`, in sorted path order."""
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise CharRNNError(f"folder {folder} holds no text files")
    return files


def check_encoding(encoding: str) -> None:
    """An unknown encoding is a usage error, raised before any file is read."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None


# ---- the error contract ---------------------------------------------------------------


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


# ---- streaming code points --------------------------------------------------------------


def code_points(text: str) -> np.ndarray:
    """The code points of `text` through the fastest exact route (CPython encodes to
    latin-1 and UTF-16 far faster than to UTF-32)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), np.uint8)
    wide = text.encode("utf-16-le", "surrogatepass")
    if len(wide) == 2 * len(text):  # no surrogate pairs: one code unit per character
        return np.frombuffer(wide, np.uint16)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _held_back(decoder: codecs.IncrementalDecoder) -> bytes:
    """The bytes of a character the decoder has begun but not finished."""
    state = decoder.getstate()
    return state[0] if isinstance(state, tuple) else b""


def _file_code_points(
    path: Path, encoding: str, chunk_bytes: int, digest, end_line: bool
) -> Iterator[np.ndarray]:
    decoder = codecs.getincrementaldecoder(encoding)()
    name = codecs.lookup(encoding).name
    ascii_compatible, utf8 = name in _ASCII_COMPATIBLE, name == "utf-8"
    offset, last = 0, None
    try:
        with open(path, "rb") as f:
            if looks_binary(f.read(BINARY_PROBE_BYTES), encoding):
                raise binary_error(path)
            f.seek(0)
            if not (utf8 and f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8):
                f.seek(0)
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
        if digest is not None:
            digest.update(b"\n")
        yield np.array([ord("\n")], np.uint8)


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A whole file as one string, read as every corpus is (for texts that fit in memory)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CharRNNError(f"{path} is not a file")
    text = TextFiles([file], encoding, str(file), join_lines=False)
    return "".join(chunk.astype("<u4").tobytes().decode("utf-32-le") for chunk in text.code_points())
