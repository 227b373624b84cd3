"""Training curves as a picture: loss against steps and against time, from metrics.jsonl.

The right-hand axis of each panel reads the same curves in bits per character
(loss / ln 2). matplotlib draws through its Agg backend on a Figure of our own, never
through pyplot, so that no display is needed and no global state is touched.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CharRNNError, require_extra
from .folder import CURVES_FILE, RunFolder
from .storage import write_atomic


@dataclass
class Curve:
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def curves(records: list[dict[str, Any]]) -> tuple[Curve, Curve]:
    """The training curve (logged means) and the validation curve, ordered by step.

    A resumed run repeats the steps after its last checkpoint; the later record wins."""
    by_step: dict[str, dict[int, tuple[float, float]]] = {"train": {}, "val": {}}
    for record in records:
        kind, key = record.get("kind"), {"train": "loss", "val": "val_loss"}.get(record.get("kind"))
        try:
            step, loss, seconds = int(record["step"]), float(record[key]), float(record["time"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(loss):
            by_step[kind][step] = (seconds, loss)
    result = []
    for kind in ("train", "val"):
        curve = Curve()
        for step in sorted(by_step[kind]):
            seconds, loss = by_step[kind][step]
            curve.steps.append(step)
            curve.seconds.append(seconds)
            curve.loss.append(loss)
        result.append(curve)
    return result[0], result[1]


def time_unit(longest_seconds: float) -> tuple[str, float]:
    """The unit that keeps the time axis readable: seconds, minutes or hours."""
    if longest_seconds < 180:
        return "seconds", 1.0
    if longest_seconds < 3 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def render_curves(records: list[dict[str, Any]], title: str = "") -> bytes:
    """A PNG (bytes) of the training and validation loss against steps and time."""
    require_extra("plot", "matplotlib", "char-rnn plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, val = curves(records)
    if not train.steps and not val.steps:
        raise CharRNNError("no loss has been logged yet: nothing to plot")
    unit, seconds_per_unit = time_unit(max(train.seconds + val.seconds))
    figure = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2, sharey=True)
    for axes, by_time in ((panels[0], False), (panels[1], True)):
        for curve, name, style in ((train, "train", "-"), (val, "validation", "o-")):
            if curve.steps:
                x = [s / seconds_per_unit for s in curve.seconds] if by_time else curve.steps
                axes.plot(x, curve.loss, style, label=name, markersize=3, linewidth=1.4)
        axes.set_xlabel(f"time ({unit})" if by_time else "step")
        axes.grid(alpha=0.3)
        bits = axes.secondary_yaxis("right", functions=(lambda x: x / math.log(2), lambda b: b * math.log(2)))
        bits.set_ylabel("bits per character")
    panels[0].set_ylabel("loss (nats per character)")
    panels[0].legend()
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass(frozen=True)
class CurvesPicture:
    """A run's training curves as a PNG; a notebook shows it inline (IPython's _repr_png_)."""

    png: bytes
    run: Path

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the PNG to `path` (default RUN/curves.png); return the path written."""
        path = Path(path) if path is not None else self.run / CURVES_FILE
        try:
            write_atomic(path, self.png)
        except OSError as error:
            raise CharRNNError(f"cannot write {path}: {error.strerror}") from None
        return path


def draw_run(run: str | os.PathLike) -> CurvesPicture:
    """The curves of RUN/metrics.jsonl, drawn (also while the run is still training)."""
    folder = RunFolder(run)
    if not folder.path.is_dir():
        raise CharRNNError(f"run folder {folder.path} does not exist")
    records = folder.read_metrics()
    if not records:
        raise CharRNNError(f"{folder.path} has no metrics.jsonl yet: train first")
    return CurvesPicture(render_curves(records, title=folder.path.resolve().name), folder.path)


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw RUN/metrics.jsonl into `out` (default RUN/curves.png); return the path written."""
    return draw_run(run).save(out)
