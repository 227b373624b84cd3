"""Busy processes beside a measurement: what a machine shared with other programs is like.

`busy_cores(k)` starts k processes that each keep one core busy (a Python loop: one thread,
no memory traffic to speak of) and stops them when the block ends, however it ends. Each one
also stops by itself when the process that started it is gone, so a killed benchmark leaves
nothing spinning.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from .errors import UsageError
from .threads import available_cores

# Spins, and every few million iterations checks that its parent still runs.
_SPIN = (
    "import os\n"
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(2_000_000):\n"
    "        pass\n"
)


def max_busy() -> int:
    return 4 * available_cores()


def check_busy(count: int, what: str = "busy processes") -> None:
    limit = max_busy()
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= limit:
        raise UsageError(f"{what} must be a whole number from 0 to {limit} (4 per core), got {count!r}")


@contextlib.contextmanager
def busy_cores(count: int, *, core: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """`count` single-core busy processes while the block runs; `core` pins them all to
    that core (where the system allows it)."""
    check_busy(count)
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            process = subprocess.Popen([sys.executable, "-c", _SPIN], stdin=subprocess.DEVNULL)
            processes.append(process)
            if core is not None and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(process.pid, {core})
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
