"""Generation for a run trained on items: each sample is one whole new item.

The engine reads the item mark, then the start string (the beginning of the item, empty
by default); a sample ends where the model emits the mark, or at `length` characters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..config import SampleConfig
from ..data.items import ITEM_MARK
from . import Engine, stream_texts


def item_config(start: str | None, **options: Any) -> SampleConfig:
    """The config an engine runs for items: the mark, then the item's beginning."""
    return SampleConfig(start=ITEM_MARK + (start or ""), **options)


def item_request(config: SampleConfig, kind: str, *, start_given: bool) -> SampleConfig:
    """A request for text turned into one for an item, for callers that take a whole
    SampleConfig (the server): the mark before the start (empty unless given), and the
    item's end as one more stop string."""
    ends = (ITEM_MARK, "\n") if kind == "line" else (ITEM_MARK,)
    start = config.start if start_given else ""
    return replace(config, start=ITEM_MARK + start, stop=(*config.stop, *ends))


def stream_items(engine: Engine, config: SampleConfig, kind: str) -> Iterator[list[str]]:
    """Per step, the next character of each item (config from `item_config`); "" once an
    item has ended. Stops when every item has ended. A line item also ends at a newline,
    which no line holds (a model early in training may still emit one)."""
    ends = (ITEM_MARK, "\n") if kind == "line" else (ITEM_MARK,)
    ended = [False] * config.num_samples
    for step in stream_texts(engine, config):  # with stop strings, a step may hold more
        pieces = []
        for i, piece in enumerate(step):
            cut = min((piece.find(end) for end in ends if end in piece), default=-1)
            if ended[i] or cut >= 0:
                piece = "" if ended[i] else piece[:cut]
                ended[i] = True
            pieces.append(piece)
        if any(pieces):
            yield pieces
        if all(ended):
            return


def generate_items(engine: Engine, config: SampleConfig, kind: str) -> list[str]:
    """`num_samples` items, each its beginning and what follows up to its end."""
    items = [[config.start.removeprefix(ITEM_MARK)] for _ in range(config.num_samples)]
    for step in stream_items(engine, config, kind):
        for item, ch in zip(items, step, strict=True):
            item.append(ch)
    return ["".join(item) for item in items]
