"""Dropout whose masks cost a third of PyTorch's on CPU.

On CPU, `F.dropout` draws one 32-bit random number per element (bernoulli_), and for the
defaults' model its three masks took as long per step as all of the gate arithmetic. Here each
64-bit random word serves four elements, as four 16-bit uniform numbers: an element is kept
when its number is at least round(p * 65536), so p is applied to within 1/65536 and the kept
values are scaled by the exact inverse of the keep rate that results (measured for a
100 x 64 x 512 tensor: 9 ms against 25 ms forward, 11 ms against 28 ms with the backward).
Elsewhere (CUDA) PyTorch's fused kernel is left in charge. The masks come from the default
generator, as PyTorch's do, so a seed and a checkpointed RNG state reproduce them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LEVELS = 1 << 16  # the 16-bit uniform numbers a mask is drawn from


def dropout(x: torch.Tensor, p: float, training: bool = True, shared_dim: int | None = None) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the masks drawn four to a random word on CPU. With
    `shared_dim`, one mask serves every position along that dimension (the time steps, for
    variational dropout)."""
    dropped = round(p * _LEVELS)
    if not training or p == 0:
        return x
    if dropped in (0, _LEVELS) or (x.device.type != "cpu" and shared_dim is None):
        return F.dropout(x, p, training)
    shape = list(x.shape)
    if shared_dim is not None:
        shape[shared_dim] = 1
    if x.device.type != "cpu":
        return x * torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - p).div_(1 - p)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    uniform = words.view(torch.int16)[:n].view(shape)  # each in [-32768, 32767]
    keep = uniform >= dropped - _LEVELS // 2
    return x * keep.to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))
