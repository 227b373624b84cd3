"""The run folder: every file a run writes, and opening a run to use it."""
