"""Data-parallel training across processes started by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in every process it starts; without
them (or with a world of one) training is the plain single-process loop and nothing
here touches torch.distributed. With them, the processes join one group (gloo on the
CPU, NCCL on CUDA, one GPU per process) and:

- every rank reads its own share of each global batch of world x batch_size
  sequences (batches.py) and carries its own hidden state; states never travel;
- DistributedDataParallel averages the gradients, so the weights stay identical;
- each step's loss is averaged and every stop decision (a signal, --max-time) is
  agreed by all ranks in the same step, so that no rank waits alone in a collective;
- only rank 0 writes the run folder (the others open it read-only);
  a checkpoint gathers every rank's hidden state first, in global stream order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import resolve_device

log = logging.getLogger("char_rnn")

# Stop reasons by precedence: when ranks disagree in one step, the highest wins; None goes on.
STOP_REASONS = (None, "epochs", "max_steps", "patience", "max_time", "SIGTERM", "SIGINT")


def launched_rank() -> int:
    """This process's rank as torchrun numbered it (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes: a world of 1 does nothing."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to call for training steps: DDP averages gradients in backward()."""
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, values: list[float]) -> list[float]:
        if not self.is_distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: float) -> float:
        return self.sum([value])[0] / self.world_size if self.is_distributed else value

    def agree_on_stop(self, reason: str | None) -> str | None:
        """The stop reason every rank adopts: the most urgent one any rank has."""
        if not self.is_distributed:
            return reason
        code = torch.tensor([STOP_REASONS.index(reason)], device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return STOP_REASONS[int(code)]

    def gather_streams(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every rank's (L, B, H) state tensors joined into (L, world x B, H), rank order."""
        if not self.is_distributed:
            return tensors
        gathered = []
        for tensor in tensors:
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts, dim=1))
        return gathered

    def own_streams(self, tensors: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
        """This rank's slice of states saved in global stream order."""
        lo = self.rank * batch_size
        return [t[:, lo : lo + batch_size].contiguous() for t in tensors]

    def seed_step(self, seed: int, step: int) -> None:
        """Give each rank its own dropout masks, reproducible from (seed, rank, step)
        alone, so a resumed run needs no per-rank generator state."""
        if self.is_distributed:
            torch.manual_seed((seed * 1_000_003 + step) * 1_009 + self.rank)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier(**({"device_ids": [self.device.index]} if self.device.type == "cuda" else {}))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. fills the encoded-corpus cache), then the rest."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


@contextlib.contextmanager
def process_group(device_name: str = "auto") -> Iterator[Processes]:
    """Join the processes torchrun started (if it did), and leave the group afterwards.

    A group someone else already set up (training called from their own distributed
    script) is used as it is and left for them to destroy."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        yield Processes(device=resolve_device(device_name))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process on each machine
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    processes = Processes(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if processes.is_main:
        log.info("%d processes (%s), rank 0 writes the run", processes.world_size, dist.get_backend())
    try:
        yield processes
        processes.barrier()  # rank 0 may still be writing the last checkpoint
    finally:
        if owned:
            dist.destroy_process_group()
