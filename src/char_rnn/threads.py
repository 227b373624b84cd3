"""How many CPU threads the arithmetic uses: pinned, or chosen from what is measured.

One decision for training, evaluation and generation (`thread_choice`): a count the caller
gives (`--threads N`, `threads=N`) or CHAR_RNN_THREADS pins it; otherwise a `ThreadChoice`
times the work itself. The work comes in units of equal size (a training step, a chunk of
generated characters, a chunk of evaluated text); each runs inside `choice.unit()`. The first
units after a warm-up try each candidate count in turn, interleaved, and the fastest on
average is kept.
The candidates are tried again when the kept count's unit time grows by more than `drift`
(another program started) and every `reprobe_seconds` (one may have stopped), both less
often while the choice holds, so that an idle machine pays a few units in a few minutes.

Why measure rather than follow a rule: on an idle machine the large GEMMs want every core,
but with one core taken by another program each parallel region of a small operation waits
for a thread the scheduler is not running, and one thread is then several times faster
(measured: the defaults' training kept 38 % of its speed beside one busy core with two
threads). Which way a given model on a given machine goes is found only by timing it.

Each unit sets its thread count and puts the previous one back: the library leaves the
process's setting as it found it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

from .errors import UsageError

T = TypeVar("T")

THREADS_ENV = "CHAR_RNN_THREADS"  # pins every command's count, as --threads does


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def candidate_counts(cores: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, ... up to the cores, and the cores themselves: enough to find the fast
    region on a large machine without timing every count."""
    cores = cores or available_cores()
    counts = {cores}
    n = 1
    while n < cores:
        counts.add(n)
        n *= 2
    return tuple(sorted(counts))


def check_threads(threads: int | None, what: str = "threads") -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"{what} must be a positive integer, got {threads!r}")


def pinned_threads(requested: int | None = None) -> int | None:
    """The count asked for: `requested`, else CHAR_RNN_THREADS, else None (measure)."""
    check_threads(requested)
    if requested is not None:
        return requested
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        pinned = int(value)
    except ValueError:
        raise UsageError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    check_threads(pinned, THREADS_ENV)
    return pinned


@contextlib.contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then put the previous count back."""
    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != previous:
            torch.set_num_threads(previous)


def depends_on_thread_count(figures: Callable[[], Sequence[torch.Tensor]], counts: Sequence[int]) -> bool:
    """Whether `figures` (a training step's loss and gradients, say) come out other than bit
    for bit with the fewest and with the most of `counts` threads."""
    with using_threads(counts[0]):
        fewest = figures()
    with using_threads(counts[-1]):
        most = figures()
    return not all(torch.equal(a, b) for a, b in zip(fewest, most, strict=True))


def first_thread_invariant(options: Sequence[T], figures: Callable[[T], Sequence[torch.Tensor]],
                           counts: Sequence[int]) -> T | None:  # fmt: skip
    """The first of `options` under which `figures(option)` do not depend on the thread count
    (`depends_on_thread_count`), or None where none of them gives that."""
    for option in options:
        if not depends_on_thread_count(functools.partial(figures, option), counts):
            return option
    return None


class ThreadChoice:
    """The thread count for each unit of work, from the units' own times (module docstring).

    `pinned` fixes the count. Until the first probe ends, and during the warm-up, units run
    with the fewest threads: never far from the best, where the most can be many times worse
    on a busy machine. A candidate whose first time is over `give_up` times the best one's
    is not tried again in that probe, nor in the probes a drift starts (only the periodic
    ones try it again): one such unit can cost as much as twenty good ones. A slowdown of the
    kept count starts a probe at most every `min_gap` seconds (doubled while probes keep the
    same count); a speedup waits for the periodic probe. `history` lists each choice made."""

    def __init__(
        self,
        pinned: int | None = None,
        *,
        candidates: Sequence[int] | None = None,
        warmup: int = 1,
        trials: int = 2,
        drift: float = 0.3,
        window: int = 5,
        give_up: float = 2.0,
        reprobe_seconds: float = 30.0,
        max_reprobe_seconds: float = 480.0,
        min_gap: float = 2.0,
        first_share: float = 1 / 32,
        later_share: float = 1 / 4,
        min_piece: float = 0.002,
    ):
        check_threads(pinned)
        self.pinned = pinned
        self.candidates = tuple(sorted(candidates)) if candidates else candidate_counts()
        self.trials, self.drift, self.give_up = trials, drift, give_up
        self.base_interval, self.max_interval = reprobe_seconds, max_reprobe_seconds
        self.interval = reprobe_seconds
        self.base_gap = self.gap = min_gap
        self.first_share, self.later_share, self.min_piece = first_share, later_share, min_piece
        self._warmup = warmup
        self.chosen = pinned or self.candidates[0]
        self.history: list[int] = []
        self.probes = 0  # probes completed
        self._queue: list[int] = []  # counts still to time in the running probe
        self._times: dict[int, list[float]] = {}
        self._recent: deque[float] = deque(maxlen=window)
        self._reference = 0.0  # the kept count's unit time, as the last probe measured it
        self._next_probe = self._earliest_probe = 0.0
        self._given_up: set[int] = set()  # far off the best in the last probe
        if self.measuring:
            self._start_probe()
        else:
            self.history.append(self.chosen)

    @property
    def measuring(self) -> bool:
        return self.pinned is None and len(self.candidates) > 1

    def _start_probe(self, periodic: bool = True) -> None:
        tried = [n for n in self.candidates if periodic or n not in self._given_up or n == self.chosen]
        self._queue = [n for _ in range(self.trials) for n in tried]
        self._times = {n: [] for n in tried}
        if periodic:
            self._given_up = set()

    def share(self) -> float:
        """How much of a unit to run next, for work that can be cut (generation's chunks): a
        small piece where a count other than the kept one is tried for the first time in a
        probe, so that a count that is many times slower costs little to find out, and a
        quarter of a unit for its later trials, long enough to meet the scheduler's slices."""
        if self._queue and not self._warmup:
            threads = self._queue[0]
            if threads != self.chosen:
                share = self.later_share if self._times[threads] else self.first_share
                return self._at_least_min_piece(share)
        return 1.0

    def _at_least_min_piece(self, share: float) -> float:
        """`share`, or more where that piece of a unit would take under `min_piece` seconds
        at the kept count's pace: a piece that short measures waking the threads up more
        than the work (one stream's units take a few milliseconds)."""
        known = self._times.get(self.chosen) or ([self._reference] if self._reference else [])
        if not known:
            return share
        return min(1.0, max(share, self.min_piece / max(min(known), 1e-9)))

    @contextlib.contextmanager
    def unit(self, size: float = 1.0) -> Iterator[int]:
        """Run one unit of work with the count chosen for it, and learn from its time;
        `size` is its share of a full unit (a chunk cut short at the end of a text)."""
        threads = self._queue[0] if self._queue and not self._warmup else self.chosen
        with using_threads(threads):
            started = time.perf_counter()
            yield threads
            seconds = time.perf_counter() - started
        if self.measuring:
            self._learn(threads, seconds / max(size, 1e-9))

    def _learn(self, threads: int, seconds: float) -> None:
        if self._warmup:
            self._warmup -= 1
            return
        if self._queue:
            self._queue.pop(0)
            self._times[threads].append(seconds)
            best = min(min(times) for times in self._times.values() if times)
            if seconds > self.give_up * best:  # far off the best: once is enough
                self._queue = [n for n in self._queue if n != threads]
                self._given_up.add(threads)
            if not self._queue:
                self._finish_probe()
            return
        self._recent.append(seconds)
        now = time.monotonic()
        slower = len(self._recent) == self._recent.maxlen and (
            statistics.median(self._recent) > (1 + self.drift) * self._reference
        )
        if now >= self._next_probe:
            self._start_probe(periodic=True)
        elif slower and now >= self._earliest_probe:
            self._start_probe(periodic=False)

    def _finish_probe(self) -> None:
        # By the mean of each count's trials, not the best: beside a busy core, a short trial
        # of two threads can fall inside one scheduler slice and look as fast as on an idle
        # machine, while the units after it run several times slower.
        best = {n: statistics.fmean(times) for n, times in self._times.items() if times}
        previous = self.chosen if self.probes else None
        self.chosen = min(best, key=lambda n: (best[n], n))
        self._reference = best[self.chosen]
        self.probes += 1
        self.history.append(self.chosen)
        self._recent.clear()
        # A choice that holds is checked less and less often; a changed one soon again.
        if previous == self.chosen:
            self.interval = min(self.interval * 2, self.max_interval)
            self.gap = min(self.gap * 2, self.max_interval)
        else:
            self.interval, self.gap = self.base_interval, self.base_gap
        now = time.monotonic()
        self._next_probe, self._earliest_probe = now + self.interval, now + self.gap


def thread_choice(requested: int | None = None, **options) -> ThreadChoice:
    """The one place the count is decided: pinned when asked for (or CHAR_RNN_THREADS),
    measured otherwise."""
    return ThreadChoice(pinned_threads(requested), **options)
