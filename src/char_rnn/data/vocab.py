"""Characters <-> ids: the sorted set of characters of the corpus, as in the seed."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable

import numpy as np

from ..errors import CharRNNError


def describe_char(ch: str) -> str:
    """A printable name for a character, control characters included."""
    if ch.isprintable() and not ch.isspace():
        return repr(ch)
    name = unicodedata.name(ch, None)
    return f"{ch!r} (U+{ord(ch):04X}{' ' + name if name else ''})"


class Vocab:
    """An immutable, sorted character set."""

    def __init__(self, chars: Iterable[str]):
        self.chars: tuple[str, ...] = tuple(sorted(set(chars)))
        if not self.chars:
            raise CharRNNError("the vocabulary is empty: the corpus has no characters")
        if any(len(c) != 1 for c in self.chars):
            raise CharRNNError("a vocabulary entry is not a single character")
        self._index = {c: i for i, c in enumerate(self.chars)}
        self._lookup: np.ndarray | None = None

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: object) -> bool:
        return ch in self._index

    def index(self, ch: str) -> int:
        return self._index[ch]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    @property
    def id_dtype(self) -> np.dtype:
        """The smallest unsigned type that holds every id."""
        size = len(self.chars)
        return np.dtype(np.uint8 if size <= 256 else np.uint16 if size <= 65536 else np.uint32)

    def unknown(self, text: str) -> list[str]:
        return sorted(set(text) - self._index.keys())

    def check(self, text: str, what: str = "text") -> None:
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(describe_char(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise CharRNNError(
                f"{what} has {len(missing)} character(s) not in this model's vocabulary "
                f"({len(self.chars)} characters): {shown}{more}"
            )

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        self.check(text, what)
        # A lookup table indexed by code point turns encoding into one vectorised gather.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self._table()[codes]

    def _table(self) -> np.ndarray:
        if self._lookup is None:
            table = np.zeros(max(map(ord, self.chars)) + 1, dtype=self.id_dtype)
            table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
            self._lookup = table
        return self._lookup

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps(list(self.chars), ensure_ascii=False)

    @classmethod
    def from_json(cls, payload: str | list) -> Vocab:
        chars = json.loads(payload) if isinstance(payload, str) else payload
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise CharRNNError("the saved vocabulary is not a list of characters")
        return cls(chars)
