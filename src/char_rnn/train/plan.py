"""What a training invocation will do, decided once for the CLI and the Python API alike:
the configs (defaults, a preset, options, or a saved run's own), whether it resumes, and
the settings a text leaves to be chosen (batch width, epochs, cadence)."""

from __future__ import annotations

import logging
import math
import platform
from dataclasses import dataclass, replace
from typing import Any

import torch

from .. import __version__
from ..config import (
    FINE_TUNE_LR,
    ModelConfig,
    TrainConfig,
    build_configs,
    field_names,
    from_dict,
    preset_values,
    to_dict,
)
from ..data.batches import batches_per_epoch, fit_batch_size
from ..data.corpus import Corpus, load_corpus
from ..data.items import ITEM_MARK
from ..errors import CharRNNError, UsageError
from ..run.folder import RunFolder, SavedRun
from .fine_tune import open_origin

log = logging.getLogger("char_rnn")

# Invocation options, not properties of the run: never saved in its config.json.
NOT_SAVED = ("resume", "quiet", "tensorboard", "threads")


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    train: TrainConfig
    saved: SavedRun | None  # the run to continue; None starts a new one
    origin: SavedRun | None = None  # the run a fine-tune starts from (train.init_from)


def plan_training(preset: str | None = None, **options: Any) -> Plan:
    """The configs from keyword options (None = not given) and, with `resume`, the run
    folder's saved configs as the base.

    Resuming is idempotent, so a preemptible machine can run the same command again:
    a folder with no saved run yet starts one from the options, as a command without
    `resume` would; a saved run continues with the options given beside it (a preset
    counts as options), of which model options must match the saved shape."""
    if options.get("resume"):
        out = options.get("out") or TrainConfig.out
        saved = saved_run(RunFolder(out))
        if saved is not None:
            given = {k: v for k, v in options.items() if v is not None}
            model, train = resumed_configs(saved, **{**preset_values(preset), **given})
            return Plan(model, train, saved, fine_tune_origin(train, saved))
    if options.get("init_from"):
        return plan_for(*fine_tune_configs(preset, **options))
    model, train = build_configs(preset, **options)
    return plan_for(model, train)


def plan_for(model: ModelConfig, train: TrainConfig) -> Plan:
    """The plan for configs built by the caller (`train(model, config)`)."""
    saved = saved_run(RunFolder(train.out)) if train.resume else None
    return Plan(model, train, saved, fine_tune_origin(train, saved))


def fine_tune_origin(train: TrainConfig, saved: SavedRun | None) -> SavedRun | None:
    """The run whose weights this one starts from: only a fine-tune with no checkpoint of
    its own yet (a resumed one continues from its checkpoint, whatever became of the origin)."""
    if not train.init_from or (saved is not None and RunFolder(train.out).has_committed_checkpoint()):
        return None
    return open_origin(train.init_from)


def training_corpus(plan: Plan) -> Corpus:
    """The corpus, in the vocabulary the run trains with: the text's characters, with those
    of the run it continues or starts from, and the item mark for items."""
    kept = plan.saved or plan.origin
    reserved = ITEM_MARK if plan.train.items else ""
    return load_corpus(
        plan.train.data, plan.train.encoding, extend=kept.vocab.chars if kept else (), reserved=reserved
    )


# A fine-tuned model keeps the shape of the one it starts from; these it may change.
FINE_TUNE_MODEL_OPTIONS = ("dropout", "weight_drop", "variational_dropout")


def fine_tune_configs(preset: str | None = None, **options: Any) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new run that starts from `init_from`: its model, and training
    options from the defaults (with fine-tuning's learning rate), the preset and `options`."""
    origin = open_origin(options["init_from"])
    given = {k: v for k, v in {**preset_values(preset), **options}.items() if v is not None}
    unknown = set(given) - field_names(ModelConfig) - field_names(TrainConfig)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    model_options = given.keys() & field_names(ModelConfig)
    for key in sorted(model_options - set(FINE_TUNE_MODEL_OPTIONS)):
        if getattr(origin.model, key) != given[key]:
            raise UsageError(
                f"{key} {given[key]} does not match {getattr(origin.model, key)} of the run it "
                f"starts from ({options['init_from']}): a fine-tuned model keeps its shape"
            )
    model = replace(origin.model, **{k: given[k] for k in model_options & set(FINE_TUNE_MODEL_OPTIONS)})
    train = {"lr": FINE_TUNE_LR, **{k: v for k, v in given.items() if k in field_names(TrainConfig)}}
    return model, TrainConfig(**train)


def saved_run(folder: RunFolder) -> SavedRun | None:
    """The run a resume continues, or None where nothing was saved yet."""
    if not folder.config_path.exists():
        if folder.checkpoints.is_dir() and any(folder.checkpoints.iterdir()):
            raise CharRNNError(f"{folder.config_path} is missing, but {folder.path} holds checkpoints")
        return None
    return folder.open()


def resumed_configs(saved: SavedRun, **options: Any) -> tuple[ModelConfig, TrainConfig]:
    """The saved configs with the given (non-None) training options changed. A model
    option that differs from the saved one is refused: the weights fit only their shape."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - field_names(ModelConfig) - field_names(TrainConfig)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    for key in given.keys() & field_names(ModelConfig):
        if getattr(saved.model, key) != given[key]:
            raise UsageError(
                f"{key} {given[key]} does not match the saved run's {getattr(saved.model, key)}: "
                "a resumed model keeps its shape"
            )
    train = {**saved.train, **{k: v for k, v in given.items() if k in field_names(TrainConfig)}}
    try:
        return saved.model, from_dict(TrainConfig, {**train, "resume": True})
    except TypeError as error:
        raise CharRNNError(f"the saved training config does not fit: {error}") from None


def check_same_text(saved: SavedRun, corpus: Corpus, model: ModelConfig) -> None:
    """A resumed run must read the text it was trained on, with the model it saved."""
    saved_vocab = list(saved.vocab.chars)
    if list(corpus.vocab.chars) != saved_vocab:
        extra = sorted(set(corpus.vocab.chars) - set(saved_vocab))
        raise CharRNNError(
            f"vocabulary mismatch: the corpus has {len(corpus.vocab)} characters, the "
            f"checkpoint {len(saved_vocab)}"
            + (f" (new: {''.join(extra[:20])!r})" if extra else "")
            + "; resume with the corpus the run started with"
        )
    if saved.corpus.get("sha256") != corpus.sha256:
        raise CharRNNError(
            f"corpus mismatch: {corpus.source} is not the text this run was trained on "
            "(its sha256 differs); resume with the original corpus"
        )
    if saved.model != model:
        diffs = [
            f"{k} {getattr(model, k)!r} vs saved {getattr(saved.model, k)!r}"
            for k in to_dict(saved.model)
            if getattr(saved.model, k) != getattr(model, k)
        ]
        raise CharRNNError(f"model shape mismatch: {', '.join(diffs)}")


def versions() -> dict[str, str]:
    return {"char_rnn": __version__, "torch": torch.__version__, "python": platform.python_version()}


def run_config(
    model: ModelConfig, config: TrainConfig, corpus: Corpus, **records: dict[str, Any]
) -> dict[str, Any]:
    """What config.json holds; `records` adds what a run knows of itself (its items, where
    a fine-tune came from)."""
    train = {k: v for k, v in to_dict(config).items() if k not in NOT_SAVED}
    return {
        "model": to_dict(model),
        "vocab": list(corpus.vocab.chars),
        "train": train,
        "corpus": {"sha256": corpus.sha256, "source": corpus.source, "chars": len(corpus)},
        **records,
        "versions": versions(),
    }


# ---- settings chosen from the text -----------------------------------------------------

AUTO_STEPS = 2_000  # optimizer steps that `epochs: None` plans for, at least one epoch
LONG_EPOCH_CHARS = 20_000_000  # an epoch over more text than this is also validated and saved...
LONG_EPOCH_EVERY = 1_000  # ...every this many steps, unless told otherwise


def fit_to_text(config: TrainConfig, n_chars: int, world_size: int = 1) -> TrainConfig:
    """Fill in what the defaults leave to the text: a batch narrow enough for a short text to
    give each epoch several steps, the number of epochs, and for a long text a cadence of
    validation and checkpoints within the epoch. Fitting a fitted config changes nothing.

    Items count as `n_chars` characters read in shuffled windows: a batch of them holds
    about batch_size x seq_length characters, each from a zero state."""
    batching = "shuffle" if config.items else config.batching
    batch = fit_batch_size(n_chars, batching, config.batch_size, config.seq_length, world_size)
    if batch != config.batch_size:
        log.warning(
            "the training text (%d characters) is short for a batch of %d; training with %d",
            n_chars,
            config.batch_size,
            batch,
        )
    per_epoch = max(batches_per_epoch(n_chars, batching, batch, config.seq_length, world_size), 1)
    long_epoch = n_chars > LONG_EPOCH_CHARS
    return replace(
        config,
        batch_size=batch,
        epochs=config.epochs or math.ceil(AUTO_STEPS / per_epoch),
        eval_every_steps=config.eval_every_steps or (LONG_EPOCH_EVERY if long_epoch else None),
        checkpoint_every_steps=config.checkpoint_every_steps or (LONG_EPOCH_EVERY if long_epoch else None),
    )
