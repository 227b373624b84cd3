"""Training batches, addressed by (epoch, index) so that any position can be resumed.

Shapes: B batch, T time (seq_length). Every batch is a pair (inputs, targets) of
int64 tensors of shape (B, T); targets are the inputs shifted one character on.

- `StatefulBatches` cuts the text into B contiguous streams. Batch i of every epoch
  continues each stream exactly where batch i-1 stopped, so the hidden state left by
  one batch is the right starting state for the next (truncated BPTT).
- `ShuffledBatches` draws non-overlapping windows of T+1 characters in a random
  order, as the seed's `dataset.shuffle` does; each window starts from a zero state.
  Each epoch shifts the window grid by a random offset (within the characters
  left over at the end) so that windows differ between epochs.

With several processes (distributed.py) a batch is global: world x B sequences laid
out exactly as one process with a batch of world x B would lay them out, of which
rank r takes rows r*B to (r+1)*B. A world of 1 is the single-process layout.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CharRNNError


def _too_short(n_chars: int, need: int, how: str) -> CharRNNError:
    return CharRNNError(
        f"the training text has {n_chars} characters, too few for one batch "
        f"({how}, at least {need} characters); use a longer corpus or a smaller "
        "batch_size / seq_length"
    )


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


class StatefulBatches:
    stateful = True

    def __init__(self, ids: np.ndarray, batch_size: int, seq_length: int, rank: int = 0, world_size: int = 1):
        n_streams = batch_size * world_size
        stream_length = len(ids) // n_streams
        self.batches_per_epoch = batches_per_epoch(len(ids), "stateful", batch_size, seq_length, world_size)
        if self.batches_per_epoch < 1:
            need = n_streams * (seq_length + 1)
            raise _too_short(len(ids), need, f"{n_streams} streams of {seq_length + 1}")
        # A view (of a memory map, for a large corpus): nothing is read until a batch is.
        streams = np.asarray(ids[: n_streams * stream_length]).reshape(n_streams, stream_length)
        self.streams = streams[rank * batch_size : (rank + 1) * batch_size]
        self.seq_length = seq_length

    def get(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.seq_length
        window = self.streams[:, start : start + self.seq_length + 1]
        return _to_tensor(window[:, :-1]), _to_tensor(window[:, 1:])


class ShuffledBatches:
    stateful = False

    def __init__(
        self, ids: np.ndarray, batch_size: int, seq_length: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.ids = ids
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        self.rank = rank
        self.window = seq_length + 1
        n_windows = len(ids) // self.window
        self.batches_per_epoch = batches_per_epoch(len(ids), "shuffle", batch_size, seq_length, world_size)
        if self.batches_per_epoch < 1:
            need = self.global_batch * self.window
            raise _too_short(len(ids), need, f"{self.global_batch} windows of {self.window}")
        self.n_windows = n_windows
        self.seed = seed
        self._epoch = -1
        self._order: np.ndarray | None = None
        self._offset = 0

    def _plan(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        slack = len(self.ids) - self.n_windows * self.window
        self._offset = int(torch.randint(0, slack + 1, (1,), generator=generator))
        self._order = torch.randperm(self.n_windows, generator=generator).numpy()
        self._epoch = epoch

    def get(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._plan(epoch)
        first = index * self.global_batch + self.rank * self.batch_size
        chosen = self._order[first : first + self.batch_size]
        starts = self._offset + chosen * self.window
        windows = np.stack([self.ids[s : s + self.window] for s in starts])
        return _to_tensor(windows[:, :-1]), _to_tensor(windows[:, 1:])


def make_batches(
    ids: np.ndarray,
    batching: str,
    batch_size: int,
    seq_length: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> StatefulBatches | ShuffledBatches:
    if batching == "stateful":
        return StatefulBatches(ids, batch_size, seq_length, rank, world_size)
    return ShuffledBatches(ids, batch_size, seq_length, seed, rank, world_size)


def batches_per_epoch(
    n_chars: int, batching: str, batch_size: int, seq_length: int, world_size: int = 1
) -> int:
    """How many batches an epoch holds for this layout (0: not even one)."""
    n_rows = batch_size * world_size
    if batching == "stateful":
        return max((n_chars // n_rows - 1) // seq_length, 0)
    return (n_chars // (seq_length + 1)) // n_rows


# A text too short for the asked batch trains on a narrower one, so that each epoch still
# holds this many optimizer steps (or as many as a batch of one allows).
MIN_BATCHES_PER_EPOCH = 8


def fit_batch_size(n_chars: int, batching: str, batch_size: int, seq_length: int, world_size: int = 1) -> int:
    """The largest batch, at most `batch_size`, that gives each epoch MIN_BATCHES_PER_EPOCH steps
    (fewer only where even a batch of one gives fewer). A text too short for one batch keeps
    `batch_size`, for make_batches to refuse with its reason."""

    def steps(b: int) -> int:
        return batches_per_epoch(n_chars, batching, b, seq_length, world_size)

    wanted = min(MIN_BATCHES_PER_EPOCH, steps(1))
    if wanted < 1 or steps(batch_size) >= wanted:
        return batch_size
    low, high = 1, batch_size  # steps(low) >= wanted > steps(high); steps falls as b grows
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if steps(middle) >= wanted else (low, middle)
    return low
