"""The learning rate at each step: linear warmup, then constant or a cosine decay."""

from __future__ import annotations

import math

from ..config import TrainConfig


def learning_rate(config: TrainConfig, step: int, total_steps: int, time_fraction: float = 0.0) -> float:
    """Linear warmup, then constant or cosine decay to min_lr_fraction of the peak.

    The cosine follows whichever budget runs out first: steps, or (with max_time) the
    fraction of the time already spent, over every invocation of the run, so a
    time-limited run still ends its decay and a resumed one continues it."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max((step - config.warmup_steps) / span, time_fraction, 0.0), 1.0)
    floor = config.lr * config.min_lr_fraction
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
