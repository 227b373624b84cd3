"""Which implementation runs a CPU training run's recurrent layers: the compiled fused
kernels (model/fused_rnn.py) or PyTorch's own nn.GRU/nn.LSTM.

Neither is faster everywhere: on one CPU the fused kernels won by a third, on another the
two measured within noise of each other, and which way a model goes depends on its shape,
the batch and the CPU. So the first run of a shape on a machine times a few steps each way,
interleaved, and keeps the faster; the answer is cached per CPU, PyTorch version and step
shape (recurrent_paths.json beside the encoded corpora, in $CHAR_RNN_CACHE, by default
~/.cache/char-rnn/encoded), so that later runs of the same shape pay nothing. The two
paths' numbers differ in the last bits, so a run keeps its path for its whole life,
resumes included (TrainingState.recurrent_path).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.encoded import cache_folder
from ..model import native
from ..run.storage import write_json

FUSED, PYTORCH = "fused", "pytorch"
PATHS = (FUSED, PYTORCH)
CACHE_FILE = "recurrent_paths.json"


def cache_path() -> Path:
    return cache_folder() / CACHE_FILE


def shape_key(shape: dict) -> str:
    """The cache key: the step's shape on this CPU with this PyTorch and this build of the
    fused kernels (a faster build may change the answer)."""
    identity = {"cpu": native.cpu_identity(), "torch": torch.__version__, "kernels": native.build_name()}
    return json.dumps({**identity, **shape}, sort_keys=True)


def _read_cache(path: Path) -> dict:
    # A cache that cannot be read is measured again, never an error: it holds no one's work.
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(path.read_text())
        if isinstance(cached, dict):
            return cached
    return {}


def cached_path(shape: dict) -> str | None:
    entry = _read_cache(cache_path()).get(shape_key(shape))
    return entry.get("path") if isinstance(entry, dict) and entry.get("path") in PATHS else None


def remember(shape: dict, path: str, seconds: dict[str, float]) -> None:
    """Add this shape's choice to the cache; a cache that cannot be written is skipped."""
    target = cache_path()
    cached = _read_cache(target)
    cached[shape_key(shape)] = {"path": path, "step_seconds": seconds}
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, cached)


def measure(time_step: Callable[[str], float], rounds: int = 3) -> tuple[str, dict[str, float]]:
    """The faster path by the median of `rounds` steps each, interleaved so that a change in
    the machine's load falls on both; the first step of each (a warm-up) is not counted."""
    for path in PATHS:
        time_step(path)
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path in PATHS:
            times[path].append(time_step(path))
    medians = {path: round(statistics.median(t), 5) for path, t in times.items()}
    return min(PATHS, key=medians.get), medians
