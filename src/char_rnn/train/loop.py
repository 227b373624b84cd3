"""The training loop: one explicit function, its phases labelled.

    setup     -> read the corpus, build model and optimizer, restore a checkpoint
    step      -> forward, cross-entropy, backward, clip, check for NaN, Adam step
    epoch end -> validation loss, best weights, early stopping, checkpoint
    stop      -> at epochs, max_steps, max_time, patience, SIGINT or SIGTERM: checkpoint

The hidden state is carried from batch to batch when the batches are stateful
streams, detached at each boundary so that gradients stop there (truncated
backpropagation through time), and reset at the start of every epoch.

Every stop condition is checked before a step is taken, so a run resumed from its final
checkpoint takes no step and changes nothing: it is complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig, TrainConfig, with_vocab
from ..data.batches import make_batches
from ..data.items import ItemBatches, find_items, split_items
from ..device import autocast, keep_freed_memory, resolve_precision
from ..errors import CharRNNError
from ..evaluate import EVAL_STREAMS, EvalResult, evaluate, evaluate_items
from ..model import native
from ..model.network import CharRNNModel, State, detach_state, state_from_tensors, state_tensors
from ..run.checkpoint import TrainerState, load_weights, parse_trainer
from ..run.folder import CURVES_FILE, MODEL_FILE, TRAINER_FILE, RunFolder
from ..threads import (
    ThreadChoice,
    candidate_counts,
    pinned_threads,
    thread_choice,
    using_threads,
)
from . import recurrent_path
from .average import WeightAverage
from .board import Board, open_board
from .distributed import Processes, process_group
from .fine_tune import origin_record, start_from
from .plan import Plan, check_same_text, fit_to_text, plan_for, run_config, training_corpus
from .progress import open_progress
from .schedule import adam, learning_rate
from .state import TrainingState

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
    already_complete: bool = False  # resumed a run that had nothing left to do


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


class _Trainer:
    """The model, optimizer and data of one training invocation, and where the run stands
    (`self.state`, the one thing a checkpoint saves besides tensors)."""

    def __init__(self, plan: Plan, processes: Processes):
        config = plan.train
        self.processes = processes
        self.run = RunFolder(config.out, writable=processes.is_main)
        if plan.saved is None:
            self.run.prepare_new()
        with processes.main_first():  # one process fills the encoded-corpus cache
            self.corpus = training_corpus(plan)
        self.model_config = with_vocab(plan.model, len(self.corpus.vocab))
        if plan.saved is not None:
            check_same_text(plan.saved, self.corpus, self.model_config)
        self.records: dict[str, Any] = {}
        if config.items:
            self._split_items(config)
        else:
            self.train_ids, val_ids = self.corpus.split(config.val_fraction)
            self.train_chars = len(self.train_ids)
            val_ids = val_ids[: config.val_max_chars]
            self.val_ids = val_ids if len(val_ids) >= 2 else val_ids[:0]
        self.config = config = fit_to_text(config, self.train_chars, processes.world_size)
        if config.items:
            self.batches = ItemBatches(
                self.train_items, config.batch_size, config.seq_length, config.seed, processes.world_size
            )
        else:
            self.batches = make_batches(
                self.train_ids,
                config.batching,
                config.batch_size,
                config.seq_length,
                config.seed,
                processes.rank,
                processes.world_size,
            )

        self.device = processes.device
        self.dtype = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.model = CharRNNModel(self.model_config).to(self.device)
        if plan.origin is not None:
            start_from(self.model, config.init_from, plan.origin, self.corpus.vocab)
            self.records["init_from"] = origin_record(config.init_from, plan.origin, self.corpus.vocab)
        self.optimizer = adam(self.model.parameters(), self.device, config.lr, config.weight_decay)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.state = TrainingState()
        self.hidden: State | None = None
        self.saved_step = -1  # the step of the newest checkpoint this invocation knows of
        self.threads = ThreadChoice(torch.get_num_threads())  # until choose_threads() decides
        if plan.saved is not None:
            with processes.main_first():  # rank 0 tidies the folder before others read it
                self._restore(plan)
        else:
            self.run.write_config(run_config(self.model_config, config, self.corpus, **self.records))
        self.forward_model = processes.wrap(self.model)

    def _split_items(self, config: TrainConfig) -> None:
        """The training and validation items, the latter at most val_max_chars long."""
        what = f"corpus {self.corpus.source}"
        items = find_items(self.corpus.ids, self.corpus.vocab, config.items, what=what)
        self.train_items, val_items = split_items(items, config.val_fraction, config.seed)
        self.train_chars = self.train_items.predictions
        fits = np.cumsum(val_items.lengths + 1) <= config.val_max_chars
        self.val_items = val_items.take(np.flatnonzero(fits))
        self.records["items"] = {
            "kind": config.items,
            "train_items": len(self.train_items),
            "val_items": len(self.val_items),
            "val_chars": self.val_items.chars,
        }
        log.info(
            "%d %s items: %d for training (%d characters), %d for validation (%d characters)",
            len(items),
            config.items,
            len(self.train_items),
            self.train_items.chars,
            len(self.val_items),
            self.val_items.chars,
        )

    @property
    def total_steps(self) -> int:
        planned = self.config.epochs * self.batches.batches_per_epoch
        return min(planned, self.config.max_steps) if self.config.max_steps else planned

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.processes.world_size

    @property
    def evaluated_model(self) -> CharRNNModel:
        """The weights that validation measures and best.safetensors keeps."""
        return self.average.model if self.average is not None else self.model

    # ---- restore ----

    def _restore(self, plan: Plan) -> None:
        folder = self.run.clean_after_crash(self.config.keep_last)
        if folder is None and not self.run.has_committed_checkpoint():
            # Killed before its first checkpoint: the seed makes starting over exact.
            log.info("no checkpoint was committed yet; starting %s from step 0", self.run.path)
            self.run.forget_metrics_after(0)
            return
        if folder is None:
            raise CharRNNError(f"{self.run.path} holds no complete checkpoint to resume from")
        load_weights(self.model, folder / MODEL_FILE)
        trainer = parse_trainer(folder / TRAINER_FILE)
        try:
            self.optimizer.load_state_dict(trainer.optimizer)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CharRNNError(f"optimizer state in {folder} does not fit: {error}") from None
        try:
            self.state = TrainingState.from_json(trainer.counters)
        except (TypeError, ValueError) as error:
            raise CharRNNError(f"trainer state in {folder} is damaged ({error})") from None
        self.saved_step = self.state.step
        self._restore_average(trainer.averaged, folder)
        torch.set_rng_state(trainer.rng)
        hidden = self._resume_position(trainer.hidden)
        if hidden and self.batches.stateful and self.state.batch > 0:
            self.hidden = state_from_tensors([h.to(self.device) for h in hidden])
        if self._own_stop_reason() is None:
            # Record the options this invocation resumed with (e.g. a new max_steps), and
            # forget what a killed invocation logged after the checkpoint: it is redone.
            resumed = run_config(self.model_config, self.config, self.corpus, **self.records)
            self.run.write_config({**plan.saved.payload, **resumed})
            self.run.forget_metrics_after(self.state.step)
        log.info("resumed from %s (step %d, epoch %d)", folder.name, self.state.step, self.state.epoch + 1)

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

    def _resume_position(self, hidden: list) -> list:
        """The hidden state to resume with, for this rank; moves the batch index when the
        batch layout changed (another number of processes or batch_size).

        Streams are laid out by the global batch, so with the same global batch every
        stream continues exactly. With another one the streams are cut differently: the
        run resumes at the same fraction of the epoch, from a zero state."""
        state, per_epoch = self.state, self.batches.batches_per_epoch
        saved = (state.global_batch or self.config.batch_size, state.batches_per_epoch or per_epoch)
        if saved == (self.global_batch, per_epoch):
            return self.processes.own_streams(hidden, self.config.batch_size) if hidden else []
        state.batch = state.batch * per_epoch // max(saved[1], 1)
        log.info(
            "the global batch changed from %d to %d: resuming at batch %d of %d with a fresh hidden state",
            saved[0],
            self.global_batch,
            state.batch + 1,
            per_epoch,
        )
        return []

    # ---- before the clock starts ----

    def build_kernels(self) -> None:
        """Build the compiled time loops now where this run uses them and this machine has
        none yet: the build (about half a minute, once per machine) is not training time."""
        uses_native = self.model.fused_cpu and self.device.type == "cpu"
        if not (uses_native and self.dtype in (torch.float32, torch.bfloat16)):
            return
        if native.needs_build():
            log.info("building the compiled time loop for this CPU (once per machine, about half "
                     "a minute; not counted in --max-time)")  # fmt: skip
        native.kernels()

    def choose_recurrent_path(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The fused kernels or PyTorch's layers for this run's recurrent layers on CPU
        (recurrent_path.py): measured on the first run of this shape on this machine, then
        cached; kept for the run's whole life. A run saved before the choice existed keeps the
        fused kernels it trained with, and distributed ranks keep them too (one path for all)."""
        state = self.state
        if not self.model.fused_cpu or self.device.type != "cpu" or self.processes.is_distributed:
            return
        if state.recurrent_path not in recurrent_path.PATHS:
            fresh = state.step == 0
            state.recurrent_path = self._measured_path(x, y) if fresh else recurrent_path.FUSED
        self.model.fused_cpu = state.recurrent_path == recurrent_path.FUSED

    def _measured_path(self, x: torch.Tensor, y: torch.Tensor) -> str:
        c, config = self.model_config, self.config
        threads = pinned_threads(config.threads) or torch.get_num_threads()
        shape = {"cell": c.cell, "vocab": c.vocab_size, "embedding": c.embedding_dim, "units": c.units,
                 "layers": c.layers, "dropout": c.dropout > 0, "weight_drop": c.weight_drop > 0,
                 "batch": tuple(x.shape), "dtype": str(self.dtype), "threads": threads,
                 **({"variational_dropout": True} if c.variational_dropout else {})}  # fmt: skip
        cached = recurrent_path.cached_path(shape)
        if cached is not None:
            return cached

        def time_step(path: str) -> float:
            self.model.fused_cpu = path == recurrent_path.FUSED
            return self._trial_step(x, y, threads)[1]

        chosen, seconds = recurrent_path.measure(time_step)
        recurrent_path.remember(shape, chosen, seconds)
        log.info("recurrent layers: %s (a step took %.3f s with the fused kernels, %.3f s with "
                 "PyTorch's; measured once for this shape on this machine)",
                 "the fused kernels" if chosen == recurrent_path.FUSED else "PyTorch's",
                 seconds[recurrent_path.FUSED], seconds[recurrent_path.PYTORCH])  # fmt: skip
        return chosen

    def choose_threads(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """How many threads each step uses (threads.py): pinned when asked for; else timed,
        and timed again as the machine's load changes where the count leaves the numbers as
        they are; where it does not, timed once for the whole run, so that an uninterrupted
        run and a resumed one cannot differ."""
        pinned = pinned_threads(self.config.threads)
        candidates = candidate_counts()
        if pinned is not None or self.device.type != "cpu" or self.processes.is_distributed:
            self.threads = ThreadChoice(pinned or torch.get_num_threads())
            return
        if len(candidates) == 1:
            self.threads = ThreadChoice(candidates[0])
            return
        state = self.state
        if state.threads_invariant is None:

            def step_figures() -> list[torch.Tensor]:
                return self._trial_step(x, y, torch.get_num_threads())[0]

            state.threads_invariant = self.model.choose_gradient_layout(step_figures, candidates)
            state.gates_transposed = self.model.gates_transposed
            if not state.threads_invariant:
                seconds = {n: self._trial_step(x, y, n)[1] for n in candidates}
                state.threads = min(seconds, key=lambda n: seconds[n])
                log.info(
                    "%d threads for this run: its numbers depend on the count, which is kept so "
                    "that a resume stays exact",
                    state.threads,
                )
        # The layout is in the checkpoints, so a resume takes the same one; runs saved before
        # it had its own field used the faster exactly where their numbers depended on the count.
        if state.gates_transposed is None:
            state.gates_transposed = state.threads_invariant
        self.model.gates_transposed = state.gates_transposed
        self.threads = ThreadChoice(state.threads, candidates=candidates)

    def _trial_step(self, x: torch.Tensor, y: torch.Tensor, threads: int) -> tuple[list[torch.Tensor], float]:
        """The loss, gradient norm and gradients of one step on (x, y) with `threads` threads,
        and its time; the weights, optimizer and random state are left as they were."""
        rng = torch.get_rng_state()
        hidden = self.hidden if self.batches.stateful else None
        with using_threads(threads):
            started = time.perf_counter()
            with autocast(self.device, self.dtype):
                logits, _ = self.forward_model(x, hidden)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), math.inf)
            seconds = time.perf_counter() - started
        figures = [loss.detach(), norm] + [
            p.grad.clone() for p in self.model.parameters() if p.grad is not None
        ]
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        return figures, seconds

    def eval_threads(self) -> ThreadChoice:
        """Validation's own choice (its chunks are another unit of work than a step), pinned
        where the steps' count is."""
        return thread_choice(self.threads.pinned)

    # ---- the phases ----

    def stop_reason(self, signal_name: str | None = None) -> str | None:
        """Why the run stops before its next step, or None to go on; every rank agrees."""
        return self.processes.agree_on_stop(self._own_stop_reason(signal_name))

    def _own_stop_reason(self, signal_name: str | None = None) -> str | None:
        """This process's view of `stop_reason`; a collective must not be called where
        the ranks take turns (restoring), and there it is the same on every rank."""
        config, state = self.config, self.state
        reason = None
        if signal_name:
            reason = signal_name
        elif state.epoch >= config.epochs:
            reason = "epochs"
        elif config.max_steps and state.step >= config.max_steps:
            reason = "max_steps"
        elif config.max_time and state.elapsed >= config.max_time:
            reason = "max_time"
        elif config.patience and state.bad_epochs >= config.patience:
            reason = "patience"
        return reason

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """One optimizer step on a (B, T) batch; returns the loss in nats/char, or None
        when the step was skipped because the loss or gradient was not finite."""
        config, state = self.config, self.state
        # The share of the time budget spent so far; ranks' clocks differ a little, and
        # their learning rates must not.
        spent = self.processes.mean(state.elapsed / config.max_time) if config.max_time else 0.0
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, state.step, self.total_steps, spent)
        if self.device.type == "cuda":
            # Page-locked host memory lets the copy overlap the previous step's kernels.
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        hidden = self.hidden if self.batches.stateful else None
        self.processes.seed_step(config.seed, state.step)
        with autocast(self.device, self.dtype):
            logits, hidden = self.forward_model(x, hidden)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        loss_value = self.processes.mean(float(loss.detach()))  # every rank decides alike
        state.step += 1
        state.batch += 1
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            if config.on_nonfinite != "skip":
                raise CharRNNError(
                    f"training diverged at step {state.step}: the loss or gradient is not finite; "
                    "lower lr or grad_clip (no checkpoint was written from it)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            state.skipped_steps += 1
            log.warning("step %d skipped: the loss or gradient is not finite", state.step)
            # A non-finite state would poison every later batch of the stream.
            finite = all(bool(t.isfinite().all()) for t in state_tensors(hidden))
            self.hidden = detach_state(hidden) if self.batches.stateful and finite else None
            return None
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model, state.step)
        # The state's value carries into the next batch; its graph must not.
        self.hidden = detach_state(hidden) if self.batches.stateful else None
        state.epoch_loss_sum += loss_value
        state.epoch_loss_count += 1
        return loss_value

    def validate(self) -> tuple[EvalResult | None, bool]:
        """The validation loss, and whether it is the best so far (whose weights are then
        kept in best.safetensors)."""
        self.state.validated_step = self.state.step
        val = self._validation_loss()
        best = self.state.best_val_loss
        if val is None or not math.isfinite(val.loss) or (best is not None and val.loss >= best):
            return val, False
        self.state.best_val_loss = val.loss
        self.run.save_best(self.evaluated_model)
        return val, True

    def _validation_loss(self) -> EvalResult | None:
        if self.config.items:
            if len(self.val_items) == 0:
                return None
            return evaluate_items(
                self.evaluated_model, self.val_items, dtype=self.dtype, threads=self.eval_threads()
            )
        if len(self.val_ids) < 2:
            return None
        if not self.processes.is_distributed:
            return evaluate(self.evaluated_model, self.val_ids, dtype=self.dtype, threads=self.eval_threads())
        # Each rank reads one slice of the text (sharing one character with the next, so
        # that every character after the first is still predicted exactly once).
        rank, world = self.processes.rank, self.processes.world_size
        lo, hi = (len(self.val_ids) - 1) * rank // world, (len(self.val_ids) - 1) * (rank + 1) // world
        total, count = 0.0, 0
        if hi > lo:
            part = evaluate(
                self.evaluated_model,
                self.val_ids[lo : hi + 1],
                streams=max(EVAL_STREAMS // world, 1),
                dtype=self.dtype,
                threads=self.eval_threads(),
            )
            total, count = part.loss * part.chars, part.chars
        total, count = self.processes.sum([total, count])
        return EvalResult(loss=total / count, chars=int(count))

    @property
    def epoch_train_loss(self) -> float:
        return self.state.epoch_loss_sum / max(self.state.epoch_loss_count, 1)

    def end_epoch(self, val: EvalResult | None, improved: bool) -> None:
        """Close the epoch: count it towards patience and reset its sums."""
        state = self.state
        if val is not None:
            state.bad_epochs = 0 if improved else state.bad_epochs + 1
        state.epoch, state.batch, state.epoch_loss_sum, state.epoch_loss_count = state.epoch + 1, 0, 0.0, 0

    def checkpoint(self) -> None:
        if self.saved_step == self.state.step:
            return
        # A collective: every rank calls checkpoint() at the same steps.
        hidden = self.processes.gather_streams(state_tensors(self.hidden)) if self.hidden is not None else []
        self.state.global_batch = self.global_batch
        self.state.batches_per_epoch = self.batches.batches_per_epoch
        trainer = TrainerState(
            counters=self.state.to_json(),
            optimizer=self.optimizer.state_dict(),
            rng=torch.get_rng_state(),
            hidden=hidden,
            averaged=self.average.tensors() if self.average is not None else [],
        )
        self.run.save_checkpoint(self.model, trainer, keep_last=self.config.keep_last)
        self.saved_step = self.state.step


def train(model_config: ModelConfig, config: TrainConfig) -> TrainResult:
    """Train (or, with `config.resume`, continue training) and return where it stopped.

    Started by torchrun, every process calls this and they train as one (distributed.py)."""
    return run_plan(plan_for(model_config, config))


def run_plan(plan: Plan) -> TrainResult:
    keep_freed_memory()
    with process_group(plan.train.device) as processes:
        if not processes.is_main:
            plan = replace(plan, train=replace(plan.train, quiet=True))  # one progress bar, rank 0's
        with open_board(plan.train.tensorboard if processes.is_main else None) as board:
            return _train(_Trainer(plan, processes), board)


def _train(trainer: _Trainer, board: Board) -> TrainResult:
    config, run, state = trainer.config, trainer.run, trainer.state
    finished = trainer.stop_reason()
    if finished is not None:
        log.info("%s is complete (step %d, stopped by %s): nothing to do", run.path, state.step, finished)
        if trainer.processes.is_main and not (run.path / CURVES_FILE).exists():
            _draw_curves(run)  # a kill can come between the final checkpoint and the curves
        return _result(trainer, finished, None, None, already_complete=True)
    per_epoch = trainer.batches.batches_per_epoch
    log.info(
        "training %s %d x %d (%s parameters) on %d characters, %d batches an epoch, %s %s",
        config.batching,
        config.batch_size,
        config.seq_length,
        f"{trainer.model.num_parameters():,}",
        trainer.train_chars,
        per_epoch,
        trainer.device.type,
        str(trainer.dtype).replace("torch.", ""),
    )
    progress = open_progress(
        config.quiet, trainer.total_steps, state.step, trainer.global_batch * config.seq_length
    )
    # Before the clock: neither the build nor the choices of path and threads are training time.
    trainer.build_kernels()
    first_batch = trainer.batches.get(state.epoch, min(state.batch, per_epoch - 1))
    trainer.choose_recurrent_path(*first_batch)
    trainer.choose_threads(*first_batch)
    window = _SpeedWindow(trainer.global_batch * config.seq_length)
    clock = _Clock(state)
    stopped, val, improved, last_loss = None, None, False, None

    def record(kind: str, **figures: Any) -> None:
        clock.tick()
        entry = {
            "kind": kind,
            "step": state.step,
            "epoch": state.epoch + 1,
            "time": round(state.elapsed, 3),
            **figures,
        }
        run.append_metrics(entry)
        board.add(entry)

    def validate() -> tuple[EvalResult | None, bool]:
        result, better = trainer.validate()
        if result is not None:
            record("val", val_loss=result.loss, val_bpc=result.bpc, val_chars=result.chars)
            board.add_sample(trainer.evaluated_model, trainer.corpus.vocab, state.step, config.seed)
        return result, better

    with stop_on_signals() as request, progress:
        while True:
            # A checkpoint of an earlier version can stand at the end of an epoch, before
            # its end was handled: then the epoch ends before any step.
            if state.batch < per_epoch:
                clock.tick()
                stopped = trainer.stop_reason(request.get("signal"))
                if stopped is not None:
                    break
                # ---- step ----
                if state.batch == 0:
                    trainer.hidden = None  # every epoch starts its streams from a zero state
                x, y = trainer.batches.get(state.epoch, state.batch)
                with trainer.threads.unit():
                    loss = trainer.step(x, y)
                progress.step(loss)
                if loss is not None:
                    last_loss = loss
                    window.add(loss)
                if state.step % config.log_every == 0 and window.steps:
                    mean, speed = window.close()
                    lr = trainer.optimizer.param_groups[0]["lr"]
                    record("train", loss=mean, lr=lr, chars_per_s=round(speed, 1))
                    progress.say(
                        f"step {state.step}: loss {mean:.4f} ({mean / math.log(2):.3f} bpc), "
                        f"{speed:,.0f} chars/s",
                    )
                if config.eval_every_steps and state.step % config.eval_every_steps == 0:
                    val, improved = validate()
                    if val is not None:
                        progress.say(f"step {state.step}:" + _val_text(val).lstrip(","))
            # ---- epoch end ----
            epoch_ended = state.batch >= per_epoch
            if epoch_ended:
                if state.validated_step != state.step:
                    val, improved = validate()
                train_loss = trainer.epoch_train_loss
                record("epoch_train", train_loss=train_loss, train_bpc=train_loss / math.log(2))
                trainer.end_epoch(val, improved)
                progress.say(
                    f"epoch {state.epoch}: train loss {train_loss:.4f} "
                    f"({train_loss / math.log(2):.3f} bpc)" + _val_text(val),
                )
            # ---- checkpoint (the final one is written at the stop) ----
            every_steps = config.checkpoint_every_steps
            due = (epoch_ended and state.epoch % config.checkpoint_every_epochs == 0) or (
                every_steps and state.step % every_steps == 0
            )
            if due:
                clock.tick()
                if trainer.stop_reason(request.get("signal")) is None:
                    trainer.checkpoint()
        # ---- stop ----
        if stopped not in EXIT_SIGNALS and state.validated_step != state.step:
            val, _ = validate()
        record("stop", reason=stopped)
        trainer.checkpoint()
    log.info(
        "stopped (%s) at step %d, epoch %d; checkpoint in %s",
        stopped,
        state.step,
        state.epoch + (state.batch > 0),
        run.path,
    )
    if trainer.processes.is_main:
        _draw_curves(run)
    return _result(trainer, stopped, last_loss, val)


def _result(
    trainer: _Trainer,
    stopped: str,
    train_loss: float | None,
    val: EvalResult | None,
    already_complete: bool = False,
) -> TrainResult:
    state = trainer.state
    return TrainResult(
        run=trainer.run.path,
        step=state.step,
        epoch=state.epoch,
        stopped=stopped,
        train_loss=train_loss,
        val=val,
        best_val_loss=state.best_val_loss,
        already_complete=already_complete,
    )


class _Clock:
    """Adds the time this invocation has run to the run's saved total, so that max_time
    and the cosine that follows it count across resumes."""

    def __init__(self, state: TrainingState):
        self.state = state
        self.last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        self.state.elapsed += now - self.last
        self.last = now


class _SpeedWindow:
    """The mean loss and characters per second since the last log line."""

    def __init__(self, chars_per_step: int):
        self.chars_per_step = chars_per_step
        self.started, self.steps, self.loss = time.monotonic(), 0, 0.0

    def add(self, loss: float) -> None:
        self.steps += 1
        self.loss += loss

    def close(self) -> tuple[float, float]:
        now = time.monotonic()
        figures = self.loss / self.steps, self.steps * self.chars_per_step / max(now - self.started, 1e-9)
        self.started, self.steps, self.loss = now, 0, 0.0
        return figures


def _draw_curves(run: RunFolder) -> None:
    """RUN/curves.png: a picture that cannot be drawn never fails the training it shows."""
    try:
        from ..run.curves import plot_run

        plot_run(run.path)
    except Exception as error:  # matplotlib missing or broken, a full disk, ...
        log.warning("training curves not drawn: %s", error)


def _val_text(val: EvalResult | None) -> str:
    return f", validation loss {val.loss:.4f} ({val.bpc:.3f} bpc)" if val else ""
