"""Training speed on this machine: characters per second, achieved GFLOP/s, and that as a
fraction of the GEMM peak measured here for the same dtype.

FLOPs are counted from the shapes, not measured: a training step costs three times the
forward pass's multiply-adds (forward, then the gradients of the inputs and of the weights),
2 FLOPs each. The gate arithmetic, embedding and optimizer are left out: they are small.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..device import autocast, keep_freed_memory
from ..model.network import CharRNNModel
from ..threads import candidate_counts, thread_choice
from .schedule import adam

GATES = {"gru": 3, "lstm": 4, "rnn": 1}


def training_flops_per_char(model: ModelConfig) -> float:
    """FLOPs of one training step per character of the batch."""
    forward = 0.0
    for layer in range(model.layers):
        inputs = model.embedding_dim if layer == 0 else model.units
        forward += 2 * GATES[model.cell] * model.units * (inputs + model.units)
    forward += 2 * model.units * model.vocab_size
    return 3 * forward


def gemm_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    """The best GFLOP/s of a square GEMM in `dtype` with the current thread setting."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


@dataclass(frozen=True)
class TrainSpeed:
    chars_per_s: float
    gflops: float  # achieved, from the analytic FLOP count
    peak_gflops: float  # measured GEMM peak for the dtype in use
    dtype: torch.dtype
    fused: bool
    steps: int
    threads: int  # the count the timed steps ran with (the last one chosen)

    @property
    def peak_fraction(self) -> float:
        return self.gflops / self.peak_gflops


def measure_training(
    model_config: ModelConfig,
    *,
    batch_size: int = 64,
    seq_length: int = 100,
    dtype: torch.dtype = torch.float32,
    steps: int = 5,
    warmup: int = 1,
    fused: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> TrainSpeed:
    """Time `steps` training steps (forward, cross-entropy, backward, clipping, Adam) on CPU
    after `warmup` untimed ones, on random characters: the cost does not depend on the text.

    Each step runs with the thread count training would use (threads.py): `threads` pins it;
    otherwise the untimed steps go on until the first choice is made, as it is at the start
    of a training run, and the timed ones run with it (and with any later choice). The fused
    layers' weight-gradient layout is chosen as training chooses it
    (CharRNNModel.choose_gradient_layout)."""
    if model_config.vocab_size < 1:
        raise ValueError("model_config.vocab_size must be set")
    keep_freed_memory()  # as train() does
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = CharRNNModel(model_config)
    model.fused_cpu = fused and model.fused_cpu
    optimizer = adam(model.parameters(), device, lr=1e-3)
    shape = (batch_size, seq_length)
    x = torch.randint(0, model_config.vocab_size, shape, generator=generator)
    y = torch.randint(0, model_config.vocab_size, shape, generator=generator)

    def backward() -> torch.Tensor:  # the loss, its gradients in the parameters
        with autocast(device, dtype):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def step() -> None:
        backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    def step_figures() -> list[torch.Tensor]:  # a step's loss and gradients, all else kept
        rng = torch.get_rng_state()
        figures = [backward().detach(), *(p.grad.clone() for p in model.parameters())]
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        return figures

    candidates = candidate_counts()
    if threads is None and len(candidates) > 1:  # as a training run finds it (train/loop.py)
        model.choose_gradient_layout(step_figures, candidates)
    choice = thread_choice(threads)

    def timed_step() -> None:
        with choice.unit():
            step()

    for _ in range(warmup):
        timed_step()
    while choice.measuring and choice.probes == 0:
        timed_step()
    started = time.perf_counter()
    for _ in range(steps):
        timed_step()
    seconds = time.perf_counter() - started
    chars_per_s = steps * batch_size * seq_length / seconds
    return TrainSpeed(
        chars_per_s=chars_per_s,
        gflops=chars_per_s * training_flops_per_char(model_config) / 1e9,
        peak_gflops=gemm_peak_gflops(dtype),
        dtype=dtype,
        fused=model.fused_cpu,
        steps=steps,
        threads=choice.chosen,
    )
