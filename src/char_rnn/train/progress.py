"""How training shows where it stands, decided here for the CLI and the Python API alike.

- quiet (`--quiet`, `CharRNN.train(progress=False)`): no bar, and the lines go to the
  "char_rnn" logger, which the CLI then sets to warnings only;
- a terminal (stderr is one): tqdm's bar on stderr with the loss, cleared at the end, and
  the log lines written above it;
- a Jupyter kernel: tqdm's notebook bar (a widget with ipywidgets, the `notebook` extra;
  a text bar without) with the loss and chars/s, kept at the end, and the log lines (each
  epoch's losses among them) printed below it, since a notebook shows no logger;
- anything else (a pipe, a log file): no bar; the lines go to the "char_rnn" logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("char_rnn")

OFF, TERMINAL, NOTEBOOK, LINES = "off", "terminal", "notebook", "lines"


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's kernel app is running)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def display_kind(quiet: bool) -> str:
    if quiet:
        return OFF
    if in_notebook():
        return NOTEBOOK
    return TERMINAL if sys.stderr.isatty() else LINES


class Progress:
    """The bar (or none) of one training invocation, and where its lines go."""

    def __init__(self, kind: str, total: int, initial: int, chars_per_step: int):
        from tqdm import tqdm

        self.kind = kind
        self.chars_per_step = chars_per_step
        bar: Any = tqdm
        if kind == NOTEBOOK:
            from tqdm import notebook

            bar = notebook.tqdm if notebook.IProgress is not None else tqdm
        self.bar = bar(
            total=total,
            initial=initial,
            disable=kind not in (TERMINAL, NOTEBOOK),
            unit="step",
            dynamic_ncols=True,
            leave=kind == NOTEBOOK,
            file=sys.stderr,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def step(self, loss: float | None) -> None:
        """One optimizer step done; `loss` None when it was skipped."""
        self.bar.update(1)
        if loss is None or self.bar.disable:
            return
        postfix = {"loss": f"{loss:.3f}"}
        rate = self.bar.format_dict.get("rate")
        if self.kind == NOTEBOOK and rate:
            postfix["chars/s"] = f"{rate * self.chars_per_step:,.0f}"
        self.bar.set_postfix(postfix, refresh=False)

    def say(self, message: str) -> None:
        """A log line that does not break the bar."""
        if self.bar.disable:
            log.info(message)
        elif self.kind == NOTEBOOK:
            self.bar.write(message, file=sys.stdout)
        else:
            self.bar.write(message, file=sys.stderr)


def open_progress(quiet: bool, total: int, initial: int, chars_per_step: int) -> Progress:
    return Progress(display_kind(quiet), total, initial, chars_per_step)
