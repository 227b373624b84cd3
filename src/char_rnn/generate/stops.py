"""Stop strings: a sample ends where it first completes one of them, and its text is cut
just before it (the stop string itself is left out, as language-model APIs do).

Text is released as it is made, except a tail that could still grow into a stop string:
that tail is held back until the next characters show whether it does. Every way of
generating goes through here: the library's `stream`/`generate`, the CLI and the server's
batch of streams.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..config import SampleConfig
from ..data.vocab import Vocab


def check_stops(vocab: Vocab, stops: tuple[str, ...]) -> None:
    """A stop string with a character the model cannot write could never end a sample."""
    for stop in stops:
        vocab.check(stop, f"the stop string {stop!r}")


class StopMatcher:
    """Follows one sample's text: `feed(text)` returns the part that is final."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.pending = ""  # released later: it may be the beginning of a stop string
        self.stopped: str | None = None  # the stop string that ended the sample

    def feed(self, text: str) -> str:
        if self.stopped is not None:
            return ""
        if not self.stops:
            return text
        buffer = self.pending + text
        # The occurrence that is completed first ends the sample; of two completed at the
        # same character, the longer one (it began earlier).
        first: tuple[int, int] | None = None
        for stop in self.stops:
            at = buffer.find(stop)
            if at >= 0 and (first is None or (at + len(stop), at) < first):
                first = (at + len(stop), at)
                self.stopped = stop
        if first is not None:
            self.pending = ""
            return buffer[: first[1]]
        keep = self._tail_that_may_grow(buffer)
        self.pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The sample ran to its length: what was held back is text after all."""
        rest, self.pending = self.pending, ""
        return rest

    def _tail_that_may_grow(self, buffer: str) -> int:
        for size in range(min(len(buffer), self.longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0


def stop_streams(steps: Iterator[list[str]], config: SampleConfig) -> Iterator[list[str]]:
    """An engine's steps (one character per sample) with the config's stop strings applied:
    per step, the text that became final for each sample (possibly empty); it ends once
    every sample has stopped, or when the engine ends."""
    if not config.stop:
        yield from steps
        return
    matchers = [StopMatcher(config.stop) for _ in range(config.num_samples)]
    try:
        for step in steps:
            yield [m.feed(ch) for m, ch in zip(matchers, step, strict=True)]
            if all(m.stopped is not None for m in matchers):
                return
        rest = [m.flush() for m in matchers]
        if any(rest):
            yield rest
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
