"""The Python API: a trained model with its vocabulary, ready to generate and evaluate.

from char_rnn import CharRNN
model = CharRNN.load("runs/shakespeare")
print(model.generate("ROMEO:", length=200, temperature=0.8))

model = CharRNN.train(data="my.txt", out="runs/mine", max_time=300)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapt import Adaptation, AdaptedEval, continuation_start
from .config import AdaptConfig, ModelConfig, SampleConfig
from .data.corpus import load_corpus
from .data.items import ITEM_MARK, find_items
from .data.vocab import Vocab
from .device import resolve_device, resolve_precision
from .errors import CharRNNError, UsageError
from .evaluate import (
    EVAL_STREAMS,
    CorpusEval,
    EvalResult,
    Score,
    evaluate,
    evaluate_corpus,
    evaluate_items,
    evaluate_windows,
    score_text,
)
from .generate import DEFAULT_ENGINE, Engine, engine_kind, generate_texts, open_engine, stream_texts
from .generate.beam import BeamResult, beam_search
from .generate.items import generate_items, item_config, stream_items
from .model.ensemble import Ensemble
from .model.network import CharRNNModel
from .novelty import CopyIndex, Novelty
from .run.checkpoint import load_weights
from .run.curves import CurvesPicture, draw_run
from .run.folder import RunFolder
from .threads import check_threads, thread_choice
from .train.loop import TrainResult, run_plan
from .train.plan import plan_training

# How many items `generate_novel` may draw for each new one asked before it gives up.
NOVEL_DRAWS_PER_ITEM = 20


class CharRNN:
    """A model loaded from a run folder, with the engine that generates from it."""

    def __init__(
        self,
        model: CharRNNModel,
        vocab: Vocab,
        run_config: dict[str, Any],
        engine: str = DEFAULT_ENGINE,
        *,
        run: str | os.PathLike | None = None,
        which: str = "latest",
        threads: int | None = None,
    ):
        check_threads(threads)
        self.threads = threads  # None: each call measures its own (threads.py)
        self.model = model
        self.vocab = vocab
        self.run_config = run_config
        self.run = Path(run) if run is not None else None  # the run folder it was loaded from
        # How stream/generate run the model (see char_rnn.generate); an engine that reads a
        # file of its own, as onnx does, finds it in `run`.
        self.engine: Engine = open_engine(engine, model, vocab, run=run, which=which, threads=threads)
        self.run_path = run
        self._adaptations: dict[AdaptConfig, Adaptation] = {}

    @classmethod
    def load(
        cls,
        run: str | os.PathLike,
        *,
        which: str = "latest",
        device: str = "cpu",
        engine: str = DEFAULT_ENGINE,
        threads: int | None = None,
        ensemble: Sequence[str | os.PathLike] = (),
    ) -> CharRNN:
        """Load the newest weights of a run folder (`which="best"` for the best ones).

        `engine="fast"` (the default) generates through a compiled loop with int8 weights
        on the CPU; `engine="reference"` calls the model once per character;
        `engine="onnx"` runs the run's exported model.onnx in onnxruntime (CPU only).
        Beam search and evaluation use the model itself whatever the engine.

        `threads` pins the CPU threads that generation and evaluation use; by default they
        time their own work and keep the fastest count, as the machine's load changes.

        `ensemble`: more run folders trained on the same characters, read beside this one as
        one model whose next-character probabilities are the mean of all of theirs
        (model/ensemble.py): a lower loss than any of them. It generates with the reference
        engine and cannot adapt."""
        if engine_kind(engine).cpu_only and device != "cpu":  # before the weights load
            raise UsageError(f"the {engine} engine runs on the CPU only; use device cpu, not {device!r}")
        folder = RunFolder(run)
        saved = folder.open()
        model = _load_model(folder, saved.model, which, device)
        if ensemble:
            members = [_ensemble_member(other, saved.vocab, which, device) for other in ensemble]
            model = Ensemble([model, *members])
        return cls(model, saved.vocab, saved.payload, engine, run=folder.path, which=which, threads=threads)

    @classmethod
    def train(cls, preset: str | None = None, *, progress: bool = True, **options: Any) -> CharRNN:
        """Train with the given options (the CLI's flag names) and load the result.

        In a terminal or a notebook a progress bar shows the loss as it trains, with a line
        for each epoch; `progress=False` (as `quiet=True`) shows nothing (train/progress.py)."""
        if not progress:
            options["quiet"] = True
        result = train_run(preset=preset, **options)
        return cls.load(result.run)

    def plot(self) -> CurvesPicture:
        """The run's training curves: shown inline in a notebook; `.save(path)` writes the PNG."""
        if self.run is None:
            raise CharRNNError("this model was not loaded from a run folder: there are no curves to plot")
        return draw_run(self.run)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def items(self) -> str | None:
        """The kind of items the model learned ("line", "paragraph"), or None for one text."""
        return self.run_config.get("train", {}).get("items")

    def stream(self, start: str | None = None, **options: Any) -> Iterator[list[str]]:
        """Yield each step's next character for every sample, as it is generated; with
        `stop=` strings, each step's text that became final (held back while it may still
        be the beginning of a stop string), ending when every sample has stopped. For an
        items model, an item that has ended yields "", and the stream stops when all have."""
        if self.items:
            return stream_items(self.engine, item_config(start, **options), self.items)
        return stream_texts(self.engine, SampleConfig(start=_text_start(start), **options))

    def generate(
        self,
        start: str | None = None,
        length: int = 1000,
        *,
        adapt_to: str | None = None,
        adapt: AdaptConfig | None = None,
        **options: Any,
    ) -> str | list[str]:
        """The start string plus `length` generated characters (a newline starts by default);
        a list when num_samples > 1. For an items model each sample is one item: the start
        (empty by default) and what follows up to the item's end, at most `length` more.

        `stop="\n\n"` (or a list of strings) ends a sample where it first writes one of
        them; the text stops just before it.

        `adapt_to=text`: the model first reads `text` learning from it (`adapted`), then
        continues it: the start is the end of `text` (`continuation_start`) unless given."""
        if adapt_to is not None:
            start = continuation_start(adapt_to) if start is None else start
            return self.adapted(adapt_to, adapt).generate(start, length, **options)
        if self.items:
            config = item_config(start, length=length, **options)
            texts = generate_items(self.engine, config, self.items)
        else:
            config = SampleConfig(start=_text_start(start), length=length, **options)
            texts = generate_texts(self.engine, config)
        return texts if config.num_samples > 1 else texts[0]

    def novelty(self, samples: str | list[str]) -> list[Novelty]:
        """For each sample, the longest span it shares with the training text and, for an
        items model, whether it is one of the training items. The first call builds the
        run's index (RUN/novelty/, the `novelty` extra); later ones read it."""
        if self.run_path is None:
            raise UsageError(
                "novelty compares with a run's training text; load the model from its run folder"
            )
        index = CopyIndex.for_run(self.run_path)
        samples = [samples] if isinstance(samples, str) else samples
        return [index.novelty(sample, item=bool(self.items)) for sample in samples]

    def generate_novel(self, num_samples: int, *, max_draws: int | None = None, **options: Any) -> list[str]:
        """`num_samples` items that are not training items, drawn in rounds until there are
        enough or `max_draws` items were drawn (default NOVEL_DRAWS_PER_ITEM per item asked).
        With a seed the rounds use seed, seed + 1, ...; same seed, same items."""
        if not self.items:
            raise UsageError("only a model trained on items can make new items (train with --items)")
        max_draws = max_draws or NOVEL_DRAWS_PER_ITEM * num_samples
        index = self._copy_index()
        seed = options.pop("seed", None)
        novel: list[str] = []
        for drawn in range(0, max_draws, num_samples):
            round_seed = None if seed is None else seed + drawn // num_samples
            batch = self.generate(num_samples=num_samples, seed=round_seed, **options)
            novel += [item for item in batch if not index.has_item(item)]
            if len(novel) >= num_samples:
                return novel[:num_samples]
        raise CharRNNError(
            f"only {len(novel)} of {num_samples} items were new after {max_draws} draws: the model "
            "mostly repeats its training items; use a higher temperature or a model trained less long"
        )

    def _copy_index(self) -> CopyIndex:
        if self.run_path is None:
            raise UsageError("novelty compares samples with a run's training text: load a run folder")
        return CopyIndex.for_run(self.run_path)

    def beam_search(self, start: str = "\n", length: int = 200, beams: int = 4) -> BeamResult:
        """The likeliest continuation found keeping `beams` candidates (deterministic)."""
        return beam_search(self.model, self.vocab, start, length, beams)

    def encode_text(self, text: str, what: str = "the evaluation text") -> np.ndarray:
        if len(text) < 2:
            raise CharRNNError(f"{what} needs at least two characters")
        return self.vocab.encode(text, what=what)

    def evaluate(
        self, text: str, *, streams: int = EVAL_STREAMS, adapt: bool | AdaptConfig = False
    ) -> EvalResult | AdaptedEval:
        """Loss over the whole text with the state carried; for an items model, over the
        text's items, each whole.

        `adapt=True` (or an AdaptConfig) reads the text as one stream in segments, each scored
        and then learned from (adapt.py), and returns the adapted loss with the static loss
        of the same reading beside it; the model's own weights do not change."""
        if adapt is not False:
            ids = self.encode_text(text)
            return self.adaptation(None if adapt is True else adapt).evaluate(self.model, ids)
        if self.items:
            items = find_items(self.encode_text(text), self.vocab, self.items, what="the evaluation text")
            threads = thread_choice(self.threads)
            return evaluate_items(self.model, items, dtype=self.eval_dtype, threads=threads)
        ids, threads = self.encode_text(text), thread_choice(self.threads)
        return evaluate(self.model, ids, streams=streams, dtype=self.eval_dtype, threads=threads)

    @property
    def eval_dtype(self) -> torch.dtype:
        """The dtype the static evaluations read in: the run's training precision, so that
        `evaluate` measures what validation during training logged (bf16 on a CPU with native
        bf16 unless the run was trained with --precision fp32; measured within 0.00002 nats of
        fp32 on the quality preset's model, at 2.5 times the speed)."""
        precision = self.run_config.get("train", {}).get("precision", "auto")
        return resolve_precision(precision, self.model.head.weight.device)

    def score(self, text: str) -> Score:
        """Total bits, bits per character and each character's surprisal in bits; for an items
        model each line (or paragraph) is scored as one item, its end included."""
        return score_text(self.model, self.vocab, text, self.items)

    def evaluate_windows(self, text: str, *, window: int = 256) -> EvalResult:
        """Loss over independent windows, each from a zero state."""
        ids = self.encode_text(text)
        return evaluate_windows(
            self.model, ids, window=window, dtype=self.eval_dtype, threads=thread_choice(self.threads)
        )

    def evaluate_file(
        self,
        data: str | os.PathLike | None = None,
        *,
        split: str | None = None,
        window: int = 0,
        encoding: str | None = None,
        adapt: bool | AdaptConfig = False,
    ) -> CorpusEval:
        """Loss on a corpus (file, folder or "shakespeare") read through the same encoded
        memory map as training. Without `data`: the run's own corpus and, unless `split`
        says otherwise, its validation part; with `data`, all of it. `split` is "all",
        "train" or "val", cut as training cuts it; `window` > 0 also reports the loss over
        independent windows of that many characters. `adapt` as for `evaluate`: the carried
        loss is then the adapted one, and `static` the trained weights' on the same text."""
        adaptation = self.adaptation(None if adapt is True else adapt) if adapt is not False else None
        train = self.run_config.get("train", {})
        own = data is None
        if own:
            data = _run_corpus(self.run_config)
            encoding = encoding or train.get("encoding", "utf-8")
        reserved = ITEM_MARK if self.items else ""
        corpus = load_corpus(str(data), encoding or "utf-8", vocab=self.vocab, reserved=reserved)
        split = split or ("val" if own else "all")
        val_fraction = float(train.get("val_fraction", 0.1))
        return evaluate_corpus(
            self.model,
            corpus,
            split=split,
            val_fraction=val_fraction,
            window=0 if self.items else window,
            items=self.items,
            seed=int(train.get("seed", 0)),
            adaptation=adaptation,
            dtype=self.eval_dtype,
            threads=thread_choice(self.threads),
        )

    def adaptation(self, config: AdaptConfig | None = None) -> Adaptation:
        """What reading with adaptation needs: `config` (the defaults when None) and the
        gradient statistics of these weights on the end of the run's training part (computed
        once per config)."""
        config = config or AdaptConfig()
        if not isinstance(config, AdaptConfig):
            raise UsageError(f"adapt must be True, False or an AdaptConfig, got {config!r}")
        if self.items:
            raise UsageError("adaptation reads one long text; this run was trained on items")
        if isinstance(self.model, Ensemble):
            raise UsageError("adaptation learns one model's weights; read an ensemble without it")
        if config not in self._adaptations:
            self._adaptations[config] = Adaptation.prepare(
                self.model, self.run_text("train"), config, threads=self.threads
            )
        return self._adaptations[config]

    def run_text(self, split: str = "val") -> np.ndarray:
        """The ids of a part ("train", "val" or "all") of the run's own corpus, cut as
        training cut it."""
        train = self.run_config.get("train", {})
        reserved = ITEM_MARK if self.items else ""
        encoding = train.get("encoding", "utf-8")
        corpus = load_corpus(_run_corpus(self.run_config), encoding, vocab=self.vocab, reserved=reserved)
        return corpus.part(split, float(train.get("val_fraction", 0.1)))

    def adapted(self, text: str, adapt: AdaptConfig | None = None) -> CharRNN:
        """A copy of this model whose weights have read `text` with adaptation, learning its
        names and style as they went: generate from it to continue the text. This model and
        the run's files are untouched."""
        if self.engine.name == "onnx":
            raise UsageError(
                "the onnx engine runs the exported file, which cannot adapt; use engine fast or reference"
            )
        adaptation = self.adaptation(adapt)
        ids = self.encode_text(text, what="the text to adapt to")
        model = adaptation.adapted_model(self.model, ids)
        return CharRNN(
            model, self.vocab, self.run_config, self.engine.name, run=self.run, threads=self.threads
        )


def _load_model(folder: RunFolder, config: ModelConfig, which: str, device: str) -> CharRNNModel:
    model = CharRNNModel(config)
    load_weights(model, folder.weights_path(which))
    return model.to(resolve_device(device)).eval()


def _ensemble_member(run: str | os.PathLike, vocab: Vocab, which: str, device: str) -> CharRNNModel:
    """Another run's model, for an ensemble with a model of `vocab`: the same characters in
    the same order, or its outputs would not mean the same characters."""
    folder = RunFolder(run)
    saved = folder.open()
    if saved.vocab.chars != vocab.chars:
        raise UsageError(
            f"{folder.path} was trained on other characters than the first run: an ensemble's "
            "runs must share one vocabulary (train them on the same corpus)"
        )
    return _load_model(folder, saved.model, which, device)


def _text_start(start: str | None) -> str:
    return SampleConfig.start if start is None else start


def _run_corpus(run_config: dict[str, Any]) -> str:
    """The corpus a run was trained on: its resolved path if it is still there, else its name."""
    source = run_config.get("corpus", {}).get("source")
    if source and os.path.exists(source):
        return source
    return run_config.get("train", {}).get("data", "shakespeare")


def train_run(preset: str | None = None, **options: Any) -> TrainResult:
    """Train with keyword options (the CLI's flag names; None = not given).

    With `resume=True` the run folder's saved configs are the base, a folder with nothing
    saved yet starts a new run, and a finished run is left as it is (train/plan.py)."""
    return run_plan(plan_training(preset, **options))
