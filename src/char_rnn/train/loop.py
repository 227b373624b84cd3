"""The training loop: one explicit function, its phases labelled.

    setup     -> read the corpus, build model and optimizer, restore a checkpoint
    step      -> forward, cross-entropy, backward, clip, check for NaN, Adam step
    epoch end -> validation loss, best weights, early stopping, checkpoint
    stop      -> at --epochs, --max-steps, --max-time, SIGINT or SIGTERM: checkpoint

The hidden state is carried from batch to batch when the batches are stateful
streams, detached at each boundary so that gradients stop there (truncated
backpropagation through time), and reset at the start of every epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import __version__
from ..config import ModelConfig, TrainConfig, from_dict, to_dict, with_vocab
from ..data.batches import batches_per_epoch, fit_batch_size, make_batches
from ..data.corpus import Corpus, load_corpus
from ..device import autocast, keep_freed_memory, resolve_precision
from ..errors import CharRNNError, UsageError
from ..evaluate import EvalResult, evaluate
from ..model.network import CharRNNModel, State, detach_state, state_from_tensors, state_tensors
from ..run.checkpoint import TrainerState, load_weights, parse_trainer
from ..run.folder import RunFolder
from .average import WeightAverage
from .distributed import Processes, process_group

log = logging.getLogger("char_rnn")

EXIT_SIGNALS = {"SIGINT": 130, "SIGTERM": 143}


@dataclass(frozen=True)
class TrainResult:
    run: Path
    step: int
    epoch: int
    stopped: str  # "epochs", "max_steps", "max_time", "patience", "SIGINT", "SIGTERM"
    train_loss: float | None
    val: EvalResult | None
    best_val_loss: float | None


def learning_rate(config: TrainConfig, step: int, total_steps: int, time_fraction: float = 0.0) -> float:
    """Linear warmup, then constant or cosine decay to min_lr_fraction of the peak.

    The cosine follows whichever budget runs out first: steps, or (with --max-time) the
    fraction of the time already spent, so a time-limited run still ends its decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max((step - config.warmup_steps) / span, time_fraction, 0.0), 1.0)
    floor = config.lr * config.min_lr_fraction
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def versions() -> dict[str, str]:
    return {
        "char_rnn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def resume_configs(out: str, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """The configs a run was saved with, with the given (non-None) training options changed.

    A model option that differs from the saved one is refused: a checkpoint's weights
    only fit the shape they were trained with."""
    run = RunFolder(out)
    saved = run.read_config()
    try:
        model = from_dict(ModelConfig, saved["model"])
    except (TypeError, UsageError) as error:
        raise CharRNNError(f"{run.config_path} has an invalid model config: {error}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        if hasattr(model, key) and getattr(model, key) != value:
            raise UsageError(
                f"--{key.replace('_', '-')} {value} does not match the checkpoint's "
                f"{getattr(model, key)}: a resumed model keeps its shape"
            )
    train_values = {**saved["train"], **{k: v for k, v in given.items() if not hasattr(model, k)}}
    train_values.update(out=out, resume=True)
    return model, from_dict(TrainConfig, train_values)


# ---- signals ---------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, str]]:
    """Turn SIGINT/SIGTERM into a request to stop after the current step."""
    request: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, _frame: Any) -> None:
        request["signal"] = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---- setup -----------------------------------------------------------------------------


def _check_resume(saved: dict[str, Any], corpus: Corpus, model_config: ModelConfig) -> None:
    saved_vocab = saved["vocab"]
    if list(corpus.vocab.chars) != saved_vocab:
        extra = sorted(set(corpus.vocab.chars) - set(saved_vocab))
        raise CharRNNError(
            f"vocabulary mismatch: the corpus has {len(corpus.vocab)} characters, the "
            f"checkpoint {len(saved_vocab)}"
            + (f" (new: {''.join(extra[:20])!r})" if extra else "")
            + "; resume with the corpus the run started with"
        )
    if saved.get("corpus", {}).get("sha256") != corpus.sha256:
        raise CharRNNError(
            f"corpus mismatch: {corpus.source} is not the text this run was trained on "
            "(its sha256 differs); resume with the original corpus"
        )
    saved_model = from_dict(ModelConfig, saved["model"])
    if saved_model != model_config:
        diffs = [
            f"{k} {getattr(model_config, k)!r} vs saved {getattr(saved_model, k)!r}"
            for k in to_dict(saved_model)
            if getattr(saved_model, k) != getattr(model_config, k)
        ]
        raise CharRNNError(f"model shape mismatch: {', '.join(diffs)}")


def _run_config(model_config: ModelConfig, config: TrainConfig, corpus: Corpus) -> dict[str, Any]:
    return {
        "model": to_dict(model_config),
        "vocab": list(corpus.vocab.chars),
        "train": to_dict(config),
        "corpus": {"sha256": corpus.sha256, "source": corpus.source, "chars": len(corpus)},
        "versions": versions(),
    }


# ---- settings chosen from the text -----------------------------------------------------

AUTO_STEPS = 2_000  # optimizer steps that `epochs: None` plans for, at least one epoch
LONG_EPOCH_CHARS = 20_000_000  # an epoch over more text than this is also validated and saved...
LONG_EPOCH_EVERY = 1_000  # ...every this many steps, unless told otherwise


def fit_to_text(config: TrainConfig, n_chars: int, world_size: int = 1) -> TrainConfig:
    """Fill in what the defaults leave to the text: a batch narrow enough for a short text to
    give each epoch several steps, the number of epochs, and for a long text a cadence of
    validation and checkpoints within the epoch. Fitting a fitted config changes nothing."""
    batch = fit_batch_size(n_chars, config.batching, config.batch_size, config.seq_length, world_size)
    if batch != config.batch_size:
        log.warning(
            "the training text (%d characters) is short for a batch of %d; training with %d",
            n_chars, config.batch_size, batch,
        )  # fmt: skip
    per_epoch = max(batches_per_epoch(n_chars, config.batching, batch, config.seq_length, world_size), 1)
    long_epoch = n_chars > LONG_EPOCH_CHARS
    return replace(
        config,
        batch_size=batch,
        epochs=config.epochs or math.ceil(AUTO_STEPS / per_epoch),
        eval_every_steps=config.eval_every_steps or (LONG_EPOCH_EVERY if long_epoch else None),
        checkpoint_every_steps=config.checkpoint_every_steps or (LONG_EPOCH_EVERY if long_epoch else None),
    )


# ---- the loop --------------------------------------------------------------------------


class _Trainer:
    """The mutable state of one training invocation; `train()` drives it."""

    def __init__(self, model_config: ModelConfig, config: TrainConfig, processes: Processes):
        self.config = config
        self.processes = processes
        self.run = RunFolder(config.out, writable=processes.is_main)
        saved = self.run.read_config() if config.resume else None
        if not config.resume:
            self.run.prepare_new()
        with processes.main_first():  # one process fills the encoded-corpus cache
            self.corpus = load_corpus(config.data, config.encoding)
        self.model_config = with_vocab(model_config, len(self.corpus.vocab))
        if saved is not None:
            _check_resume(saved, self.corpus, self.model_config)
        self.train_ids, self.val_ids = self.corpus.split(config.val_fraction)
        self.config = config = fit_to_text(config, len(self.train_ids), processes.world_size)
        self.batches = make_batches(
            self.train_ids, config.batching, config.batch_size, config.seq_length, config.seed,
            processes.rank, processes.world_size,
        )  # fmt: skip
        self.val_ids = self.val_ids[: config.val_max_chars]
        if len(self.val_ids) < 2:
            self.val_ids = self.val_ids[:0]

        self.device = processes.device
        self.dtype = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.model = CharRNNModel(self.model_config).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.counters: dict[str, Any] = {
            "step": 0, "epoch": 0, "batch": 0, "elapsed": 0.0, "best_val_loss": None,
            "bad_epochs": 0, "epoch_loss_sum": 0.0, "epoch_loss_count": 0,
        }  # fmt: skip
        self.state: State | None = None
        self.saved_step = -1
        self.validated_step = -1
        if saved is not None:
            with processes.main_first():  # rank 0 tidies the folder before others read it
                self._restore()
        else:
            self.run.write_config(_run_config(self.model_config, config, self.corpus))
        self.forward_model = processes.wrap(self.model)

    @property
    def total_steps(self) -> int:
        planned = self.config.epochs * self.batches.batches_per_epoch
        return min(planned, self.config.max_steps) if self.config.max_steps else planned

    def _restore(self) -> None:
        folder = self.run.clean_after_crash(self.config.keep_last)
        if folder is None and not self.run.has_committed_checkpoint():
            # Killed before its first checkpoint: the seed makes starting over exact.
            log.info("no checkpoint was committed yet; starting %s from step 0", self.run.path)
            return
        if folder is None:
            raise CharRNNError(f"{self.run.path} holds no complete checkpoint to resume from")
        load_weights(self.model, folder / "model.safetensors")
        trainer = parse_trainer(folder / "trainer.safetensors")
        try:
            self.optimizer.load_state_dict(trainer.optimizer)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CharRNNError(f"optimizer state in {folder} does not fit: {error}") from None
        saved_layout = (
            trainer.counters.pop("global_batch", None),
            trainer.counters.pop("batches_per_epoch", None),
        )
        self.counters.update(trainer.counters)
        self.saved_step = self.counters["step"]
        self._restore_average(trainer.averaged, folder)
        torch.set_rng_state(trainer.rng)
        hidden = self._resume_position(*saved_layout, trainer.hidden)
        if hidden and self.batches.stateful and self.counters["batch"] > 0:
            self.state = state_from_tensors([h.to(self.device) for h in hidden])
        # Record the options this invocation resumed with (e.g. a new --max-steps).
        payload = self.run.read_config()
        payload["train"] = to_dict(self.config)
        payload.pop("format_version", None)
        self.run.write_config(payload)
        log.info("resumed from %s (step %d, epoch %d)", folder.name, self.counters["step"],
                 self.counters["epoch"] + 1)  # fmt: skip

    def _restore_average(self, averaged: list[torch.Tensor], folder: Path) -> None:
        if self.average is None:
            return
        if not averaged:  # a run that did not average until now starts from its weights
            self.average.load(list(self.model.parameters()))
            return
        try:
            self.average.load(averaged)
        except ValueError as error:
            raise CharRNNError(f"averaged weights in {folder} do not fit: {error}") from None

    @property
    def evaluated_model(self) -> CharRNNModel:
        """The weights that validation measures and best.safetensors keeps."""
        return self.average.model if self.average is not None else self.model

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.processes.world_size

    def _resume_position(self, global_batch: int | None, per_epoch: int | None, hidden: list) -> list:
        """The hidden state to resume with, for this rank; moves the batch index when the
        batch layout changed (another number of processes or --batch-size).

        Streams are laid out by the global batch, so with the same global batch every
        stream continues exactly. With another one the streams are cut differently: the
        run resumes at the same fraction of the epoch, from a zero state."""
        if global_batch is None:  # written before layouts were recorded: one process
            global_batch, per_epoch = self.config.batch_size, self.batches.batches_per_epoch
        if (global_batch, per_epoch) == (self.global_batch, self.batches.batches_per_epoch):
            return self.processes.own_streams(hidden, self.config.batch_size) if hidden else []
        batch = self.counters["batch"] * self.batches.batches_per_epoch // max(per_epoch, 1)
        log.info("the global batch changed from %d to %d: resuming at batch %d of %d with a "
                 "fresh hidden state", global_batch, self.global_batch, batch + 1,
                 self.batches.batches_per_epoch)  # fmt: skip
        self.counters["batch"] = batch
        return []

    def checkpoint(self) -> None:
        if self.saved_step == self.counters["step"]:
            return
        # A collective: every rank calls checkpoint() at the same steps.
        hidden = self.processes.gather_streams(state_tensors(self.state)) if self.state is not None else []
        trainer = TrainerState(
            counters=dict(
                self.counters,
                global_batch=self.global_batch,
                batches_per_epoch=self.batches.batches_per_epoch,
            ),  # fmt: skip
            optimizer=self.optimizer.state_dict(),
            rng=torch.get_rng_state(),
            hidden=hidden,
            averaged=self.average.tensors() if self.average is not None else [],
        )
        self.run.save_checkpoint(self.model, trainer, keep_last=self.config.keep_last)
        self.saved_step = self.counters["step"]

    def step(self, x: torch.Tensor, y: torch.Tensor, time_fraction: float = 0.0) -> float | None:
        """One optimizer step on a (B, T) batch; returns the loss in nats/char, or None
        when the step was skipped because the loss or gradient was not finite."""
        config = self.config
        if config.max_time:  # ranks' clocks differ a little; their learning rates must not
            time_fraction = self.processes.mean(time_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.counters["step"], self.total_steps, time_fraction)
        if self.device.type == "cuda":
            # Page-locked host memory lets the copy overlap the previous step's kernels.
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        state = self.state if self.batches.stateful else None
        self.processes.seed_step(config.seed, self.counters["step"])
        with autocast(self.device, self.dtype):
            logits, state = self.forward_model(x, state)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        loss_value = self.processes.mean(float(loss.detach()))  # every rank decides alike
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            if config.on_nonfinite == "skip":
                self.optimizer.zero_grad(set_to_none=True)
                self.counters["skipped_steps"] = self.counters.get("skipped_steps", 0) + 1
                log.warning("step %d skipped: the loss or gradient is not finite", self.counters["step"] + 1)
                # A non-finite state would poison every later batch of the stream.
                finite = all(bool(t.isfinite().all()) for t in state_tensors(state))
                self.state = detach_state(state) if self.batches.stateful and finite else None
                return None
            raise CharRNNError(
                f"training diverged at step {self.counters['step'] + 1}: the loss or gradient "
                "is not finite; lower --lr or --grad-clip (no checkpoint was written from it)"
            )
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model, self.counters["step"] + 1)
        # The state's value carries into the next batch; its graph must not.
        self.state = detach_state(state) if self.batches.stateful else None
        return loss_value

    def validate(self) -> EvalResult | None:
        if len(self.val_ids) < 2:
            return None
        if not self.processes.is_distributed:
            return evaluate(self.evaluated_model, self.val_ids, dtype=self.dtype)
        # Each rank reads one slice of the text (sharing one character with the next, so
        # that every character after the first is still predicted exactly once).
        rank, world = self.processes.rank, self.processes.world_size
        lo, hi = (len(self.val_ids) - 1) * rank // world, (len(self.val_ids) - 1) * (rank + 1) // world
        total, count = 0.0, 0
        if hi > lo:
            part = evaluate(
                self.evaluated_model, self.val_ids[lo : hi + 1], streams=max(16 // world, 1), dtype=self.dtype
            )
            total, count = part.loss * part.chars, part.chars
        total, count = self.processes.sum([total, count])
        return EvalResult(loss=total / count, chars=int(count))


def train(model_config: ModelConfig, config: TrainConfig) -> TrainResult:
    """Train (or, with `config.resume`, continue training) and return where it stopped.

    Started by torchrun, every process calls this and they train as one (distributed.py)."""
    keep_freed_memory()
    with process_group(config.device) as processes:
        if not processes.is_main:
            config = replace(config, quiet=True)  # one progress bar, rank 0's
        return _train(model_config, config, processes)


def _train(model_config: ModelConfig, config: TrainConfig, processes: Processes) -> TrainResult:
    trainer = _Trainer(model_config, config, processes)
    config = trainer.config  # fitted to the text
    run, counters = trainer.run, trainer.counters
    per_epoch = trainer.batches.batches_per_epoch
    chars_per_step = trainer.global_batch * config.seq_length
    started = time.monotonic()
    elapsed_before = counters["elapsed"]
    log.info(
        "training %s %d x %d (%s parameters) on %d characters, %d batches an epoch, %s %s",
        config.batching, config.batch_size, config.seq_length,
        f"{trainer.model.num_parameters():,}", len(trainer.train_ids), per_epoch,
        trainer.device.type, str(trainer.dtype).replace("torch.", ""),
    )  # fmt: skip
    progress = _progress_bar(config, trainer.total_steps, counters["step"])
    stopped, val, last_loss = "epochs", None, None
    window_start, window_steps, window_loss = time.monotonic(), 0, 0.0

    def record(kind: str, **figures: Any) -> None:
        counters["elapsed"] = elapsed_before + time.monotonic() - started
        entry = {"kind": kind, "step": counters["step"], "epoch": counters["epoch"] + 1,
                 "time": round(counters["elapsed"], 3), **figures}  # fmt: skip
        run.append_metrics(entry)

    with stop_on_signals() as request, progress:
        while counters["epoch"] < config.epochs and stopped == "epochs":
            if counters["batch"] == 0:
                trainer.state = None  # every epoch starts its streams from a zero state
            # ---- steps ----
            while counters["batch"] < per_epoch:
                x, y = trainer.batches.get(counters["epoch"], counters["batch"])
                spent = (time.monotonic() - started) / config.max_time if config.max_time else 0.0
                loss = trainer.step(x, y, spent)
                counters["step"] += 1
                counters["batch"] += 1
                progress.update(1)
                if loss is not None:
                    last_loss = loss
                    counters["epoch_loss_sum"] += last_loss
                    counters["epoch_loss_count"] += 1
                    window_steps += 1
                    window_loss += last_loss
                    progress.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
                if counters["step"] % config.log_every == 0 and window_steps:
                    now = time.monotonic()
                    speed = window_steps * chars_per_step / max(now - window_start, 1e-9)
                    mean = window_loss / window_steps
                    record("train", loss=mean, lr=trainer.optimizer.param_groups[0]["lr"],
                           chars_per_s=round(speed, 1))  # fmt: skip
                    _say(
                        progress,
                        f"step {counters['step']}: loss {mean:.4f} "
                        f"({mean / math.log(2):.3f} bpc), {speed:,.0f} chars/s",
                    )
                    window_start, window_steps, window_loss = now, 0, 0.0
                if config.eval_every_steps and counters["step"] % config.eval_every_steps == 0:
                    val = _evaluate_and_keep_best(trainer, record, progress)
                if request:
                    stopped = request["signal"]
                elif config.max_steps and counters["step"] >= config.max_steps:
                    stopped = "max_steps"
                elif config.max_time and time.monotonic() - started >= config.max_time:
                    stopped = "max_time"
                stopped = processes.agree_on_stop(stopped)
                if stopped != "epochs":
                    break
                if config.checkpoint_every_steps and counters["step"] % config.checkpoint_every_steps == 0:
                    trainer.checkpoint()
            # ---- epoch end ----
            if counters["batch"] >= per_epoch:
                train_loss = counters["epoch_loss_sum"] / max(counters["epoch_loss_count"], 1)
                record("epoch_train", train_loss=train_loss, train_bpc=train_loss / math.log(2))
                val = _evaluate_and_keep_best(trainer, record, progress, epoch_end=True)
                counters.update(epoch=counters["epoch"] + 1, batch=0, epoch_loss_sum=0.0,
                                epoch_loss_count=0)  # fmt: skip
                _say(
                    progress,
                    f"epoch {counters['epoch']}: train loss {train_loss:.4f} "
                    f"({train_loss / math.log(2):.3f} bpc)" + _val_text(val),
                )
                if config.patience and counters["bad_epochs"] >= config.patience:
                    stopped = "patience"
                if counters["epoch"] % config.checkpoint_every_epochs == 0 and stopped == "epochs":
                    trainer.checkpoint()
        # ---- stop ----
        if stopped not in EXIT_SIGNALS and trainer.validated_step != counters["step"]:
            val = _evaluate_and_keep_best(trainer, record, progress)
        record("stop", reason=stopped)
        trainer.checkpoint()
    log.info("stopped (%s) at step %d, epoch %d; checkpoint in %s", stopped, counters["step"],
             counters["epoch"] + (counters["batch"] > 0), run.path)  # fmt: skip
    if processes.is_main:
        _draw_curves(run)
    return TrainResult(
        run=run.path, step=counters["step"], epoch=counters["epoch"], stopped=stopped,
        train_loss=last_loss, val=val, best_val_loss=counters["best_val_loss"],
    )  # fmt: skip


def _draw_curves(run: RunFolder) -> None:
    """RUN/curves.png: a picture that cannot be drawn never fails the training it shows."""
    try:
        from ..run.curves import plot_run

        plot_run(run.path)
    except Exception as error:  # matplotlib missing or broken, a full disk, ...
        log.warning("training curves not drawn: %s", error)


def _evaluate_and_keep_best(trainer: _Trainer, record, progress, epoch_end: bool = False):
    val = trainer.validate()
    counters = trainer.counters
    trainer.validated_step = counters["step"]
    if val is None:
        return None
    record("val", val_loss=val.loss, val_bpc=val.bpc, val_chars=val.chars)
    best = counters["best_val_loss"]
    if math.isfinite(val.loss) and (best is None or val.loss < best):
        counters.update(best_val_loss=val.loss, bad_epochs=0)
        trainer.run.save_best(trainer.evaluated_model)
    elif epoch_end:
        counters["bad_epochs"] += 1
    if not epoch_end:
        _say(progress, f"step {counters['step']}:" + _val_text(val).lstrip(","))
    return val


def _val_text(val: EvalResult | None) -> str:
    return f", validation loss {val.loss:.4f} ({val.bpc:.3f} bpc)" if val else ""


def _progress_bar(config: TrainConfig, total: int, initial: int):
    from tqdm import tqdm

    show = not config.quiet and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not show, unit="step", dynamic_ncols=True,
                leave=False)  # fmt: skip


def _say(progress, message: str) -> None:
    """A log line that does not break the progress bar."""
    if progress.disable:
        log.info(message)
    else:
        progress.write(message, file=sys.stderr)
