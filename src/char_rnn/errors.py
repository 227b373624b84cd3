"""The two kinds of failure a user can act on.

The library raises these; the CLI turns them into one line on stderr and an exit
status (2 for a usage error, 1 for anything else).
"""


class CharRNNError(Exception):
    """Something went wrong that the user can fix (a file, a checkpoint, a corpus)."""


class UsageError(CharRNNError, ValueError):
    """A parameter is out of range or does not make sense."""
