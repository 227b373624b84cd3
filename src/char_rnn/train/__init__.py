"""Training: the loop, its saved state, schedules, the weight average, several processes."""

from .loop import TrainResult, train

__all__ = ["TrainResult", "train"]
