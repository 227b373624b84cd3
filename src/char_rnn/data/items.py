"""A text as a list of items: names, titles or tweets one per line, or poems and recipes
separated by blank lines. Each item is learned, scored and generated as a whole.

The vocabulary of an items run holds one more symbol than its text's characters: ITEM_MARK,
which the model reads before an item's first character and learns to predict after its last.
It is U+FFFF, a code point Unicode reserves for exactly this (a "noncharacter", never
interchanged as text); a text that contains it is refused. So one item reads

    inputs   MARK c1 c2 ... cn
    targets  c1   c2 ... cn MARK

from a zero state, and no state ever carries over from one item to another.

Items are found in the encoded ids chunk by chunk (`item_spans`), so a list of many
gigabytes is never decoded into one string: an item is a (start, end) span of those ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from ..errors import CharRNNError
from .vocab import Vocab

ITEM_MARK = "\uffff"
ITEM_KINDS = ("line", "paragraph")
IGNORED = -100  # the target of a padding position: cross_entropy's ignore_index
SCAN_CHUNK = 1 << 24


@dataclass(frozen=True)
class Items:
    """Spans [starts[i], ends[i]) of `ids`, each one item, in the order of the text."""

    ids: np.ndarray  # or a MappedIds: anything that slices like an array
    starts: np.ndarray
    ends: np.ndarray
    mark: int  # ITEM_MARK's id (-1 in a vocabulary without it)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    @property
    def chars(self) -> int:
        return int(self.lengths.sum())

    @property
    def predictions(self) -> int:
        """What a loss over these items averages over: every character, and one end per item."""
        return self.chars + len(self)

    def take(self, indices: np.ndarray) -> Items:
        return Items(self.ids, self.starts[indices], self.ends[indices], self.mark)

    def item(self, index: int) -> np.ndarray:
        return np.asarray(self.ids[int(self.starts[index]) : int(self.ends[index])])

    def rows(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) for these items, one a row, each padded after its end:
        padding reads the mark (its outputs are never used: the RNN runs forward only) and
        has the target IGNORED."""
        lengths = self.lengths[indices]
        width = int(lengths.max()) + 1
        inputs = np.full((len(indices), width), self.mark, dtype=np.int64)
        targets = np.full((len(indices), width), IGNORED, dtype=np.int64)
        for row, (index, length) in enumerate(zip(indices, lengths, strict=True)):
            chars = self.item(index)
            inputs[row, 1 : length + 1] = chars
            targets[row, :length] = chars
            targets[row, length] = self.mark
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def check_kind(kind: str) -> None:
    if kind not in ITEM_KINDS:
        raise CharRNNError(f"items must be one of {', '.join(ITEM_KINDS)}, got {kind!r}")


def find_items(ids: np.ndarray, vocab: Vocab, kind: str, *, what: str = "the text") -> Items:
    """The items of `ids` (in `vocab`): its non-blank lines, or its runs of non-blank lines
    separated by blank ones. A line's ending (\\n or \\r\\n) is not part of it; a blank line
    holds nothing but white space. Only a vocabulary with ITEM_MARK makes model rows."""
    check_kind(kind)
    starts, ends = _item_spans(ids, vocab, kind)
    if len(starts) == 0:
        unit = "line" if kind == "line" else "paragraph"
        raise CharRNNError(f"{what} has no non-blank {unit}: items mode needs at least one item")
    return Items(ids, starts, ends, vocab.index(ITEM_MARK) if ITEM_MARK in vocab else -1)


def _item_spans(ids: np.ndarray, vocab: Vocab, kind: str) -> tuple[np.ndarray, np.ndarray]:
    blank = np.array([c.isspace() for c in vocab.chars], dtype=bool)
    newline = vocab.index("\n") if "\n" in vocab else -1
    newlines, nonblank_before, seen = [], [], 0
    for lo in range(0, len(ids), SCAN_CHUNK):
        part = np.asarray(ids[lo : lo + SCAN_CHUNK])
        nonblank = np.cumsum(~blank[part], dtype=np.int64) + seen
        at = np.flatnonzero(part == newline)
        newlines.append(at + lo)
        nonblank_before.append(nonblank[at])  # a newline is blank: the count before it
        seen = int(nonblank[-1]) if len(part) else seen
    breaks = np.concatenate([np.zeros(0, np.int64), *newlines])
    counted = np.concatenate([np.zeros(0, np.int64), *nonblank_before])
    # Line k spans [starts[k], ends[k]) and holds filled[k] non-blank characters.
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(ids)]])
    filled = np.concatenate([counted, [seen]]) - np.concatenate([[0], counted])
    if "\r" in vocab and len(ids):
        has_cr = (ends > starts) & (np.asarray(ids[np.maximum(ends - 1, 0)]) == vocab.index("\r"))
        ends = ends - has_cr
    full = filled > 0
    if kind == "line":
        return starts[full], ends[full]
    before = np.concatenate([[False], full[:-1]])
    after = np.concatenate([full[1:], [False]])
    return starts[full & ~before], ends[full & ~after]


def split_items(items: Items, val_fraction: float, seed: int) -> tuple[Items, Items]:
    """A seeded random `val_fraction` of the items for validation (at least one when the
    fraction is not 0 and there are two items), the rest for training; both in text order."""
    n = len(items)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return items.take(np.sort(order[n_val:])), items.take(np.sort(order[:n_val]))


class ItemBatches:
    """Batches of whole items, addressed by (epoch, index) like the other layouts.

    Items are sorted by length and cut into batches of at most `batch_size x seq_length`
    characters with their padding, so a batch holds many short items or few long ones, with
    little padding (README, Items: measured); ties in length are broken at random each
    epoch and the batches come in a random order."""

    stateful = False

    def __init__(self, items: Items, batch_size: int, seq_length: int, seed: int, world_size: int = 1):
        if world_size > 1:
            raise CharRNNError("items mode trains in one process; run it without torchrun")
        self.items = items
        self.seed = seed
        budget = batch_size * seq_length
        self.widths = np.sort(items.lengths + 1)
        if int(self.widths[-1]) > budget:
            raise CharRNNError(
                f"the longest item has {int(self.widths[-1]) - 1} characters; items are learned "
                f"whole, at most batch_size x seq_length = {budget}: raise --batch-size or "
                "--seq-length, or split the item"
            )
        self.bounds = batch_bounds(self.widths, budget)
        self.batches_per_epoch = len(self.bounds) - 1

    @property
    def padding_fraction(self) -> float:
        """The share of the batches' positions that are padding, not item."""
        padded = sum(int(self.widths[hi - 1]) * (hi - lo) for lo, hi in pairwise(self.bounds))
        return 1.0 - int(self.widths.sum()) / padded

    def get(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, epoch))
        lengths = self.items.lengths
        order = np.lexsort((rng.random(len(lengths)), lengths))  # by length, ties at random
        batch = rng.permutation(self.batches_per_epoch)[index]
        return self.items.rows(order[self.bounds[batch] : self.bounds[batch + 1]])


def batch_bounds(widths: np.ndarray, budget: int) -> np.ndarray:
    """Where sorted `widths` are cut so that each batch's rows x widest row fits `budget`."""
    bounds, first = [0], 0
    for i, width in enumerate(widths.tolist()):
        if (i + 1 - first) * width > budget:
            bounds.append(i)
            first = i
    bounds.append(len(widths))
    return np.array(bounds)
