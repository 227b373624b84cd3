"""Typed configuration: what a model is, how it is trained, how it is sampled.

Each config is a frozen dataclass validated once, when it is built; everything
downstream trusts it. Presets are plain data: a preset name maps to field values
that override the defaults, and flags given beside a preset override it in turn.
"""

from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

from .errors import UsageError

CELLS = ("gru", "lstm", "rnn")
BATCHINGS = ("stateful", "shuffle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
ON_NONFINITE = ("stop", "skip")
ITEMS = ("line", "paragraph")  # data/items.py
# Fine-tuning's default learning rate (README, Fine-tuning: measured).
FINE_TUNE_LR = 1e-3
# The groups of `char-rnn train --help`.
DATA, OPTIMIZATION, STOPPING = "data", "optimization", "stopping and checkpoints"


def option(
    default: Any,
    help: str,
    *,
    group: str = "",
    choices: tuple[str, ...] = (),
    shown: str = "",
    bare: str | None = None,
) -> Any:
    """A config field with what the CLI says of it: its help text, its group of flags, its
    choices, how its default reads where the value itself does not tell (`shown`), and the
    value its flag takes when given without one (`bare`: `--items` is `--items line`)."""
    metadata = {"help": help, "group": group, "choices": choices, "shown": shown, "bare": bare}
    return field(default=default, metadata=metadata)


def describe(config_field: Field) -> str:
    """A field's help text with its default, as `char-rnn COMMAND --help` shows it."""
    meta = config_field.metadata
    default = config_field.default
    shown = meta.get("shown") or (repr(default) if isinstance(default, str) else f"{default:,}".rstrip())
    return f"{meta['help']} (default: {shown})" if shown.strip() else meta["help"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _positive_int(name: str, value: int) -> None:
    _require(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")


def _finite(name: str, value: float) -> None:
    _require(
        isinstance(value, (int, float)) and math.isfinite(value),
        f"{name} must be a finite number, got {value!r}",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Embedding -> RNN -> Linear. `vocab_size` comes from the corpus."""

    vocab_size: int = 0
    # The defaults were chosen by measurement: the best validation loss on Shakespeare after
    # 10 minutes on a 2-core CPU (README, Results). The seed's model is `--preset tutorial`.
    embedding_dim: int = option(256, "embedding size")
    units: int = option(768, "hidden units per layer")
    layers: int = option(2, "stacked recurrent layers")
    cell: str = option("lstm", "recurrent cell", choices=CELLS)
    dropout: float = option(0.3, "dropout on the embedding, between layers and before the output")
    # DropConnect on the recurrent weights: each training batch zeroes this fraction of
    # the hidden-to-hidden weights (one mask for all its time steps and sequences).
    weight_drop: float = option(0.0, "fraction of the recurrent weights dropped in each training batch")
    # Variational dropout (Gal & Ghahramani, 2016): each sequence of a batch keeps one mask on
    # the embedding, between the layers and on the output for all its time steps. It scored
    # 0.008 better in 10 minutes than a new mask per character, and draws fewer random numbers.
    variational_dropout: bool = option(
        True, "one dropout mask per sequence for all its time steps, not a new one per character", shown="on"
    )

    def __post_init__(self) -> None:
        _require(
            isinstance(self.vocab_size, int) and self.vocab_size >= 0,
            f"vocab_size must be a non-negative integer, got {self.vocab_size!r}",
        )
        _positive_int("embedding_dim", self.embedding_dim)
        _positive_int("units", self.units)
        _positive_int("layers", self.layers)
        _require(self.cell in CELLS, f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _require(
            isinstance(self.variational_dropout, bool),
            f"variational_dropout must be True or False, got {self.variational_dropout!r}",
        )
        for name in ("dropout", "weight_drop"):
            value = getattr(self, name)
            _finite(name, value)
            _require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: data, batches, optimizer, stopping, checkpoints."""

    data: str = option("shakespeare", "text file, folder of text files, or 'shakespeare'", group=DATA)
    out: str = option("runs/latest", "run folder", group=STOPPING)
    encoding: str = option("utf-8", "encoding of the text files", group=DATA)
    items: str | None = option(
        None,
        "learn a list of items, each one whole: each non-blank line (--items), or each run of "
        "lines between blank ones (--items paragraph)",
        group=DATA,
        choices=ITEMS,
        shown="one long text",
        bare="line",
    )
    val_fraction: float = option(
        0.1,
        "fraction held out for validation: the end of the text, or a random share of the items",
        group=DATA,
    )
    init_from: str | None = option(
        None,
        "start from this run's weights (fine-tuning: a fresh optimizer, the vocabulary merged)",
        group=OPTIMIZATION,
        shown="new weights",
    )
    batching: str = option("stateful", "stateful streams or shuffled windows", group=DATA, choices=BATCHINGS)
    batch_size: int = option(64, "sequences per batch", group=DATA)
    seq_length: int = option(100, "characters per sequence", group=DATA)
    lr: float = option(
        3e-3, "Adam learning rate", group=OPTIMIZATION, shown=f"0.003; {FINE_TUNE_LR:g} with --init-from"
    )
    lr_schedule: str = option(
        "cosine", "learning-rate schedule after warmup", group=OPTIMIZATION, choices=SCHEDULES
    )
    warmup_steps: int = option(100, "linear warmup steps", group=OPTIMIZATION)
    min_lr_fraction: float = option(0.1, "the cosine's floor, as a fraction of lr", group=OPTIMIZATION)
    weight_decay: float = option(0.0, "Adam weight decay", group=OPTIMIZATION)
    # Validation and best.safetensors use an exponential moving average of the weights with
    # this decay (average.py); 0 turns it off.
    ema_decay: float = option(
        0.0,
        "validate and keep as best a moving average of the weights with this decay",
        group=OPTIMIZATION,
        shown="0: off",
    )
    grad_clip: float = option(5.0, "gradient norm clip", group=OPTIMIZATION)
    epochs: int | None = option(
        None, "epochs to train", group=STOPPING, shown="enough for 2,000 steps, at least one"
    )
    max_steps: int | None = option(None, "stop at this total step count", group=STOPPING, shown="none")
    max_time: float | None = option(
        None, "stop after this many seconds of training, counted across resumes", group=STOPPING, shown="none"
    )
    patience: int | None = option(
        None, "stop after this many epochs without a better validation loss", group=STOPPING, shown="none"
    )
    seed: int = option(0, "random seed", group=OPTIMIZATION)
    log_every: int = option(100, "log every this many steps", group=STOPPING)
    eval_every_steps: int | None = option(
        None,
        "also validate every this many steps",
        group=STOPPING,
        shown="at epoch ends, and every 1,000 steps in long epochs",
    )
    val_max_chars: int = option(
        1_000_000, "validation during training reads at most this much", group=STOPPING
    )
    checkpoint_every_epochs: int = option(5, "checkpoint every this many epochs", group=STOPPING)
    checkpoint_every_steps: int | None = option(
        None,
        "also checkpoint every this many steps",
        group=STOPPING,
        shown="every 1,000 steps in long epochs",
    )
    keep_last: int = option(3, "complete checkpoints kept; older ones are pruned", group=STOPPING)
    on_nonfinite: str = option(
        "stop", "a NaN/inf loss or gradient: stop, or skip that step", group=STOPPING, choices=ON_NONFINITE
    )
    precision: str = option("auto", "autocast dtype", group=OPTIMIZATION, choices=PRECISIONS)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", group=OPTIMIZATION)
    threads: int | None = option(
        None,
        "CPU threads (or CHAR_RNN_THREADS)",
        group=OPTIMIZATION,
        shown="chosen by timing the steps, again as the machine's load changes",
    )
    resume: bool = option(
        False,
        "continue the run in the run folder; with nothing saved there yet, start it",
        group=STOPPING,
        shown=" ",
    )
    quiet: bool = option(False, "no progress output", group=STOPPING, shown=" ")
    tensorboard: str | None = option(
        None,
        "also log loss, bits/char, learning rate, chars/s and a sample to this TensorBoard folder",
        group=STOPPING,
        shown="none",
    )

    def __post_init__(self) -> None:
        _require(bool(self.data), "data must name a file, a folder or 'shakespeare'")
        _require(bool(self.out), "out must name a folder")
        _require(
            self.items is None or self.items in ITEMS,
            f"items must be one of {', '.join(ITEMS)}, got {self.items!r}",
        )
        _require(self.init_from is None or bool(self.init_from), "init_from must name a run folder")
        _finite("val_fraction", self.val_fraction)
        _require(
            0.0 <= self.val_fraction < 1.0,
            f"val_fraction must be in [0, 1), got {self.val_fraction!r}",
        )
        _require(
            self.batching in BATCHINGS,
            f"batching must be one of {', '.join(BATCHINGS)}, got {self.batching!r}",
        )
        positive = (
            "batch_size",
            "seq_length",
            "log_every",
            "checkpoint_every_epochs",
            "keep_last",
            "val_max_chars",
        )
        for name in positive:
            _positive_int(name, getattr(self, name))
        for name in (
            "epochs",
            "max_steps",
            "patience",
            "eval_every_steps",
            "checkpoint_every_steps",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        _require(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}",
        )
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            _finite(name, value)
            _require(value > 0, f"{name} must be positive, got {value!r}")
        _finite("weight_decay", self.weight_decay)
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _finite("ema_decay", self.ema_decay)
        _require(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        _finite("min_lr_fraction", self.min_lr_fraction)
        _require(
            0.0 <= self.min_lr_fraction <= 1.0,
            f"min_lr_fraction must be in [0, 1], got {self.min_lr_fraction!r}",
        )
        _require(
            self.lr_schedule in SCHEDULES,
            f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}",
        )
        if self.max_time is not None:
            _finite("max_time", self.max_time)
            _require(self.max_time > 0, f"max_time must be positive, got {self.max_time!r}")
        _require(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _require(
            self.on_nonfinite in ON_NONFINITE,
            f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}, got {self.on_nonfinite!r}",
        )
        _require(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )


@dataclass(frozen=True)
class SampleConfig:
    """How to draw text from a model."""

    start: str = option("\n", "text to start from", shown="a newline")
    length: int = option(1000, "characters to generate")
    temperature: float = option(1.0, "0 is greedy")
    top_k: int | None = option(None, "sample among the k likeliest characters", shown="all")
    top_p: float | None = option(None, "sample from the smallest set holding p of the mass", shown="1")
    seed: int | None = option(None, "the same seed gives the same text", shown="random")
    num_samples: int = option(1, "texts to generate together")
    # A sample ends where it first completes one of these; its text stops just before it.
    stop: tuple[str, ...] = option(
        (), "end a sample when it emits this string, which is left out (repeatable)", shown="none"
    )

    def __post_init__(self) -> None:
        _require(isinstance(self.start, str) and self.start != "", "start must be a non-empty string")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        _require(
            all(isinstance(s, str) and s != "" for s in stop),
            f"stop strings must be non-empty strings, got {list(stop)!r}",
        )
        _require(
            isinstance(self.length, int) and self.length >= 0,
            f"length must be a non-negative integer, got {self.length!r}",
        )
        _finite("temperature", self.temperature)
        _require(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        if self.top_p is not None:
            _finite("top_p", self.top_p)
            _require(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p!r}")
        _positive_int("num_samples", self.num_samples)


@dataclass(frozen=True)
class AdaptConfig:
    """How a model learns from the text it reads (adapt.py: dynamic evaluation)."""

    # Chosen by bench/adapt.py --tune on the first 20,000 validation characters, the same
    # for the defaults' model on two CPUs (README, Adaptation); 0.002 made that model worse.
    adapt_segment: int = option(50, "characters scored between two updates when adapting")
    adapt_lr: float = option(
        0.0005, "size of each update, in units of the training gradients' root mean square"
    )
    adapt_decay: float = option(0.01, "pull back toward the trained weights at each update (0: none)")
    adapt_stats_chars: int = option(
        20_000, "characters at the end of the training text the gradient statistics come from"
    )

    def __post_init__(self) -> None:
        _positive_int("adapt_segment", self.adapt_segment)
        _positive_int("adapt_stats_chars", self.adapt_stats_chars)
        _require(
            self.adapt_stats_chars > self.adapt_segment,
            f"adapt_stats_chars ({self.adapt_stats_chars!r}) must be more than one segment "
            f"({self.adapt_segment!r} characters)",
        )
        for name in ("adapt_lr", "adapt_decay"):
            value = getattr(self, name)
            _finite(name, value)
            _require(value >= 0, f"{name} must be >= 0, got {value!r}")
        _require(self.adapt_decay <= 1, f"adapt_decay must be in [0, 1], got {self.adapt_decay!r}")


@dataclass(frozen=True)
class ServerConfig:
    """How `char-rnn serve` listens, and what it takes on at once (serve/)."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port; 0 picks a free one", shown="8000")
    allowed_hosts: tuple[str, ...] = ()  # extra names for the Host header, e.g. a LAN address
    cors_origins: tuple[str, ...] = ()
    max_length: int = option(5000, "characters per request")
    max_start: int = option(1000, "start-text characters")
    max_body: int = 16 * 1024
    # Streams generated together in one batch. 64 was measured on a 2-core CPU with the
    # tutorial's GRU 1024 (README, Serving): the most streams per step still gaining
    # throughput, each still far faster than anyone reads.
    max_batch: int = option(64, "streams generated together in one batch")
    max_queue: int = option(64, "requests waiting for room in the batch; beyond them, 429")
    queue_timeout: float = option(10.0, "seconds a request may wait in the queue before 429")
    timeout: float = option(60.0, "seconds per request")
    # After SIGTERM; below the 10 s that container runtimes give before SIGKILL.
    grace_period: float = option(5.0, "seconds running streams may finish after SIGTERM")

    def __post_init__(self) -> None:
        _require(
            isinstance(self.port, int) and 0 <= self.port <= 65535,
            f"port must be in 0..65535, got {self.port!r}",
        )
        for name in ("max_length", "max_start", "max_body", "max_batch"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value > 0,
                f"{name.replace('_', '-')} must be a positive integer, got {value!r}",
            )
        _require(
            isinstance(self.max_queue, int) and self.max_queue >= 0,
            f"max-queue must be a non-negative integer, got {self.max_queue!r}",
        )
        for name in ("timeout", "queue_timeout"):
            value = getattr(self, name)
            _require(
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"{name.replace('_', '-')} must be a positive number of seconds, got {value!r}",
            )
        _require(
            isinstance(self.grace_period, (int, float)) and math.isfinite(self.grace_period)
            and self.grace_period >= 0,
            f"grace-period must be a non-negative number of seconds, got {self.grace_period!r}",
        )  # fmt: skip


# Presets override the defaults of both configs; the CLI lets flags override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The seed tutorial exactly: Embedding 256 -> GRU 1024 -> Dense, sequences of 100,
    # batches of 64, Adam with its defaults, a checkpoint every 5 epochs.
    "tutorial": {
        "embedding_dim": 256,
        "units": 1024,
        "layers": 1,
        "cell": "gru",
        "dropout": 0.0,
        "seq_length": 100,
        "batch_size": 64,
        "lr": 1e-3,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "epochs": 10,
        "checkpoint_every_epochs": 5,
    },
    # The best text in about half an hour on a 2-core CPU (README, Results): a wider LSTM
    # than the defaults, with one dropout mask per sequence, a cosine planned over 20 epochs
    # and stopped once validation has not improved for 3 (it peaks near the 11th: a cosine
    # over 13 epochs, reaching zero, overfit sooner and ended 0.003 worse), validated and
    # kept as the moving average of its weights.
    "quality": {
        "embedding_dim": 256,
        "units": 1536,
        "layers": 2,
        "cell": "lstm",
        "dropout": 0.5,
        "variational_dropout": True,
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 100,
        "min_lr_fraction": 0.0,
        "epochs": 20,
        "patience": 3,
        "ema_decay": 0.995,
    },
}


def field_names(config_type: type) -> set[str]:
    return {f.name for f in fields(config_type)}


def preset_values(preset: str | None) -> dict[str, Any]:
    """The field values a preset sets (none for None)."""
    if preset is None:
        return {}
    _require(preset in PRESETS, f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[preset])


def build_configs(preset: str | None = None, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """Defaults, then the preset, then explicit overrides (None means "not given")."""
    values = preset_values(preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    model_keys, train_keys = field_names(ModelConfig), field_names(TrainConfig)
    unknown = set(values) - model_keys - train_keys
    _require(not unknown, f"unknown option(s): {', '.join(sorted(unknown))}")
    model = ModelConfig(**{k: v for k, v in values.items() if k in model_keys})
    train = TrainConfig(**{k: v for k, v in values.items() if k in train_keys})
    return model, train


def to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


# What a field added later meant for the runs saved before it existed, where its default now
# says something else: such a run keeps training, and loads, as it was trained.
SAVED_BEFORE_THE_FIELD: dict[type, dict[str, Any]] = {ModelConfig: {"variational_dropout": False}}


def from_dict(config_type: type, values: dict[str, Any]) -> Any:
    """Rebuild a config saved by `to_dict`, ignoring keys this version does not know."""
    known = field_names(config_type)
    values = {**SAVED_BEFORE_THE_FIELD.get(config_type, {}), **values}
    return config_type(**{k: v for k, v in values.items() if k in known})


def with_vocab(model: ModelConfig, vocab_size: int) -> ModelConfig:
    return replace(model, vocab_size=vocab_size)
