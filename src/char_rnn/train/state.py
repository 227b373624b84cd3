"""Where a training run stands: one typed object, saved whole in every checkpoint and
restored whole, so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainingState:
    step: int = 0  # optimizer steps taken, skipped ones included
    epoch: int = 0  # completed epochs
    batch: int = 0  # the next batch of the current epoch
    elapsed: float = 0.0  # seconds spent training, summed over every invocation of the run
    best_val_loss: float | None = None
    bad_epochs: int = 0  # epochs in a row without a better validation loss
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    skipped_steps: int = 0  # steps whose loss or gradient was not finite (--on-nonfinite skip)
    validated_step: int = -1  # the step of the newest validation
    # The batch layout the state was saved with: a resume with another one moves `batch`.
    global_batch: int | None = None
    batches_per_epoch: int | None = None
    # Whether a step's numbers came out the same with one thread and with all of them
    # (checked once per run, threads.py); where they did not, the count chosen at the start
    # is kept for the whole run, resumes included, so that a resumed run stays exact.
    threads_invariant: bool | None = None
    threads: int | None = None
    # The fused layers' weight-gradient layout (CharRNNModel.choose_gradient_layout), chosen
    # with the check above and kept, since the layouts differ in the last bits.
    gates_transposed: bool | None = None
    # "fused" or "pytorch" on CPU (recurrent_path.py), chosen at the start and then kept,
    # resumes included, since the two differ in the last bits.
    recurrent_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainingState:
        """Rebuild a saved state; keys this version does not know are ignored, and a
        checkpoint written before a field existed gets that field's default."""
        if not isinstance(values.get("step"), int):
            raise ValueError("the training state holds no step")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
