"""The kinds of failure a user can act on.

The library raises these; the CLI turns them into one line on stderr and an exit
status (2 for a usage error, 1 for anything else).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class CharRNNError(Exception):
    """Something went wrong that the user can fix (a file, a checkpoint, a corpus)."""


class UsageError(CharRNNError, ValueError):
    """A parameter is out of range or does not make sense."""


class MissingExtra(CharRNNError):
    """An optional part is used without the packages of its extra (pyproject.toml)."""


def require_extra(extra: str, module: str, what: str) -> ModuleType:
    """Import `module`, one of the packages of `extra`, for `what` (the part that needs it);
    when it, or a package it needs, is not installed, say which pip command installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtra(f"{what} needs the {extra} extra: pip install 'char-rnn[{extra}]'") from None
