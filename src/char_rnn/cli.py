"""The command line: parse, call the library, print. Nothing else lives here.

Exit status: 0 success, 1 a failure the user can fix (file, checkpoint, corpus),
2 a usage error (a bad flag or value), 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from .config import (
    PRESETS,
    AdaptConfig,
    ModelConfig,
    SampleConfig,
    ServerConfig,
    TrainConfig,
    describe,
    field_names,
)
from .errors import CharRNNError, UsageError

PROG = "char-rnn"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _command(commands: argparse._SubParsersAction, name: str, *, help: str, description: str,
             examples: Sequence[str] = ()) -> argparse.ArgumentParser:  # fmt: skip
    """A subcommand whose --help ends with its examples, laid out as written."""
    return commands.add_parser(name, help=help, description=description, epilog=_examples(*examples),
                               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip


def _add_config_flags(p: argparse.ArgumentParser, config_type: type, names: Sequence[str] | None = None,
                      *, given_only: bool = True) -> None:  # fmt: skip
    """One flag per config field, named like it (--batch-size for batch_size), with the type,
    choices and help text the field declares. `given_only`: a flag not given is None, so
    that presets and saved runs can fill it; otherwise it defaults to the field's default."""
    hints = typing.get_type_hints(config_type)
    groups: dict[str, Any] = {}
    for config_field in dataclasses.fields(config_type):
        meta = config_field.metadata
        if "help" not in meta or (names is not None and config_field.name not in names):
            continue
        group = meta["group"] if given_only and meta["group"] else ""
        if group and group not in groups:
            groups[group] = p.add_argument_group(group)
        target = groups.get(group, p)
        flag = "--" + config_field.name.replace("_", "-")
        kind = next(k for k in (bool, int, float, str) if k in typing.get_args(hints[config_field.name])
                    or hints[config_field.name] is k)  # fmt: skip
        default = None if given_only else config_field.default
        if kind is bool:
            # A field that is on by default also gets its --no- flag.
            action = argparse.BooleanOptionalAction if config_field.default is True else "store_true"
            target.add_argument(flag, action=action, default=default, help=describe(config_field))
            continue
        bare = {"nargs": "?", "const": meta["bare"]} if meta.get("bare") else {}
        target.add_argument(flag, type=kind, default=default, choices=meta["choices"] or None,
                            help=describe(config_field), **bare)  # fmt: skip


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "train",
        help="train a model on a text",
        description=(
            "Train a character-level model; checkpoints go to --out. With --resume the same "
            "command can be run again after any interruption: it continues the run, starts it if "
            "nothing was saved yet, and leaves a finished run as it is."
        ),
        examples=(
            "char-rnn train --max-time 300 --out runs/shakespeare",
            "char-rnn train --preset tutorial --epochs 30 --out runs/tutorial",
            "char-rnn train --data my_texts/ --cell lstm --layers 2 --units 512 --out runs/mine",
            "char-rnn train --resume --out runs/shakespeare --max-time 600",
        ),
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults")
    _add_config_flags(p.add_argument_group("model"), ModelConfig)
    _add_config_flags(p, TrainConfig)
    p.set_defaults(handler=cmd_train)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    _add_config_flags(p, SampleConfig, ("start",))  # None: the run's kind decides (items start empty)
    _add_config_flags(p, SampleConfig, ("length", "temperature", "top_k", "top_p", "seed"),
                      given_only=False)  # fmt: skip
    stop = SampleConfig.__dataclass_fields__["stop"]
    p.add_argument("--stop", action="append", default=[], metavar="STRING", help=describe(stop))
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")


THREADS_HELP = ("CPU threads (or CHAR_RNN_THREADS; default: chosen by timing the work, "
                "again as the machine's load changes)")  # fmt: skip
BUSY_HELP = "run K single-core busy processes beside the measurement, as other programs would (default 0)"

# Engine names the CLI once took, still accepted with a warning.
RENAMED_ENGINES = {"torch": "fast"}


def _engine_name(name: str) -> str:
    """--engine's type: a renamed engine becomes its new name, with one line on stderr."""
    if name in RENAMED_ENGINES:
        print(f"{PROG}: warning: --engine {name} is now called {RENAMED_ENGINES[name]}", file=sys.stderr)
        return RENAMED_ENGINES[name]
    return name


def _add_engine(p: argparse.ArgumentParser) -> None:
    from .generate import DEFAULT_ENGINE, ENGINES

    kinds = "; ".join(
        f"{name}{' (default)' if name == DEFAULT_ENGINE else ''}: {kind.summary}"
        for name, kind in ENGINES.items()
    )
    p.add_argument("--engine", type=_engine_name, choices=tuple(ENGINES), default=DEFAULT_ENGINE,
                   help=f"how to run the model: {kinds}")  # fmt: skip


def _add_generate(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "generate",
        help="generate text from a trained model",
        description="Generate text; a single sample streams to stdout as it is made.",
        examples=(
            'char-rnn generate runs/shakespeare --start "ROMEO:" --length 500',
            "char-rnn generate runs/shakespeare --temperature 0.7 --top-p 0.9 --seed 1",
            "char-rnn generate runs/shakespeare --num-samples 4 --length 200",
            "char-rnn generate runs/shakespeare --engine onnx   # after char-rnn export",
            'char-rnn generate runs/shakespeare --start "ROMEO:" --beam 8 --length 100',
            "char-rnn generate runs/shakespeare --stop $'\\n\\n' --num-samples 3   # one paragraph each",
            "char-rnn generate runs/shakespeare --adapt-to chapter1.txt --length 500",
        ),
    )
    _add_sampling(p)
    p.add_argument("--adapt-to", metavar="FILE",
                   help="first read FILE learning from it as it goes, then continue it (the "
                        "start string is its end unless --start is given); the run's files are "
                        "untouched")  # fmt: skip
    _add_config_flags(p.add_argument_group("adaptation (with --adapt-to)"), AdaptConfig)
    p.add_argument("--num-samples", type=int, default=1, help="texts to generate together")
    _add_engine(p)
    p.add_argument("--beam", type=int, metavar="N",
                   help="the likeliest continuation, keeping N candidates (no sampling)")  # fmt: skip
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    _add_ensemble(p)
    p.add_argument("--novelty", action="store_true",
                   help="report on stderr the longest span each sample shares with the training text "
                        "(and for items, whether it is a training item)")  # fmt: skip
    p.add_argument("--novel-only", action="store_true",
                   help="for items: draw until --num-samples items are not training items")  # fmt: skip
    p.set_defaults(handler=cmd_generate)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "eval",
        help="loss and bits per character of a model on a text",
        description=(
            "Loss over a text with the state carried. Without --data: the validation "
            "part of the run's own corpus."
        ),
        examples=(
            "char-rnn eval runs/shakespeare",
            "char-rnn eval runs/shakespeare --data other.txt --json",
            "char-rnn eval runs/shakespeare --adapt",
        ),
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="text file, folder or 'shakespeare' (default: the run's corpus)")
    p.add_argument("--split", choices=("all", "train", "val"),
                   help="part of the text (default: val of the run's corpus, all of --data)")  # fmt: skip
    p.add_argument("--encoding", help="of the text files (default: the run's for its own corpus, else utf-8)")
    p.add_argument("--window", type=int, default=0,
                   help="also report loss over independent windows of this size, e.g. 256, the "
                        "protocol transformer baselines report (default 0: none)")  # fmt: skip
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help=THREADS_HELP + "; --adapt reads one stream, on one thread")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--adapt", action="store_true",
                   help="read the text in segments, each scored and then learned from (dynamic "
                        "evaluation), beside the static loss; the run's files are untouched")  # fmt: skip
    _add_ensemble(p)
    _add_config_flags(p.add_argument_group("adaptation (with --adapt)"), AdaptConfig)
    p.set_defaults(handler=cmd_eval)


def _add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ensemble", nargs="+", metavar="RUN", default=(),
                   help="more run folders trained on the same corpus, read beside RUN as one model "
                        "whose next-character probabilities are the mean of theirs (lower loss than "
                        "any one; generation runs on the reference engine; not with adaptation)")  # fmt: skip


def _add_score(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "score",
        help="how surprising a text is to a model, character by character",
        description=(
            "Total bits, bits per character and the surprisal (bits) of each character, each "
            "given the text before it. For a run trained on items, each line (or paragraph) "
            "is one item, scored from its start, its end included."
        ),
        examples=(
            'char-rnn score runs/shakespeare "To be, or not to be"',
            "char-rnn score runs/names --file candidates.txt --json",
        ),
    )
    p.add_argument("run", help="run folder")
    p.add_argument("text", nargs="?", help="the text to score (or --file)")
    p.add_argument("--file", help="score this file's text instead")
    p.add_argument("--encoding", default="utf-8", help="of --file (default utf-8)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_score)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "serve",
        help="a web page and HTTP API to generate text",
        description=(
            "Serve a web page at / and a JSON API (POST /api/generate, POST /api/stream for "
            "server-sent events). Listens on 127.0.0.1 unless --host says otherwise."
        ),
        examples=(
            "char-rnn serve runs/shakespeare                     # then open http://127.0.0.1:8000/",
            "char-rnn serve runs/shakespeare --port 9000 --max-batch 32 --max-queue 100",
            "char-rnn serve runs/shakespeare --host 0.0.0.0 --allow-host mybox.lan",
            'curl -s localhost:8000/api/generate -d \'{"start": "ROMEO:", "length": 200}\'',
        ),
    )
    p.add_argument("run", help="run folder")
    _add_config_flags(p, ServerConfig, SERVE_FLAGS, given_only=False)
    p.add_argument("--max-concurrent", type=int, metavar="N", help="the old name of --max-batch")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another name the Host header may carry (repeatable)")  # fmt: skip
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin call the API (repeatable; default none)")  # fmt: skip
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    _add_engine(p)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--quiet", action="store_true", help="no request log")
    p.set_defaults(handler=cmd_serve)


def _add_export(commands: argparse._SubParsersAction) -> None:
    from .onnx import FORMATS

    p = _command(
        commands,
        "export",
        help="write the model as ONNX, or as a page that generates in the browser",
        description=(
            "Write RUN/model.onnx: one generation step, ids and state in, logits and state out. "
            "--format web writes a folder with that model, a sampler and onnxruntime-web: "
            "a page that generates in the browser, served by any static file server."
        ),
        examples=(
            "char-rnn export runs/shakespeare",
            "char-rnn export runs/shakespeare --checkpoint best --out shakespeare.onnx",
            "char-rnn export runs/shakespeare --format web --out site/ "
            "&& python -m http.server --directory site/",
        ),
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--format", choices=tuple(FORMATS), default="onnx",
                   help="; ".join(f"{name}: {what}" for name, what in FORMATS.items()))  # fmt: skip
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--out", help="file to write (default RUN/model.onnx, which --engine onnx reads); "
                   "for web, a folder (default RUN/web)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="web: replace a folder that is not empty")
    p.set_defaults(handler=cmd_export)


def _add_plot(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "plot",
        help="draw the training curves as a PNG",
        description="Training and validation loss (and bits/char) against steps and time.",
        examples=("char-rnn plot runs/shakespeare", "char-rnn plot runs/shakespeare --out curves.png"),
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="PNG to write (default RUN/curves.png)")
    p.set_defaults(handler=cmd_plot)


def _add_info(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "info",
        help="what a run folder holds",
        description="Model, parameters, vocabulary, training history and checkpoints of a run.",
        examples=("char-rnn info runs/shakespeare", "char-rnn info runs/shakespeare --json"),
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_info)


def _add_bench(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "bench",
        help="measure speed on this machine",
        description="Measure speed on this machine; bench/ compares it with peers.",
    )
    benches = p.add_subparsers(dest="bench", required=True, parser_class=Parser)
    _add_bench_generate(benches)
    _add_bench_train(benches)


def _add_bench_train(benches: argparse._SubParsersAction) -> None:
    p = _command(
        benches,
        "train",
        help="characters per second of training, and the fraction of the GEMM peak",
        description=(
            "Time training steps of a model on CPU and print chars/s, the GFLOP/s they "
            "amount to (counted from the shapes) and that as a fraction of the GEMM peak "
            "measured here for the same dtype."
        ),
        examples=(
            "char-rnn bench train --preset tutorial",
            "char-rnn bench train --cell lstm --layers 2 --units 512 --precision fp32",
            "char-rnn bench train --preset tutorial --rnn torch",
        ),
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults")
    _add_config_flags(p, ModelConfig, BENCH_TRAIN_FLAGS)
    _add_config_flags(p, TrainConfig, BENCH_TRAIN_FLAGS)
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--rnn", choices=("fused", "torch"), default="fused",
                   help="fused CPU kernels (default) or PyTorch's nn.GRU/nn.LSTM")  # fmt: skip
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--busy", type=int, default=0, metavar="K", help=BUSY_HELP)
    p.set_defaults(handler=cmd_bench_train)


def _add_bench_generate(benches: argparse._SubParsersAction) -> None:
    p = _command(
        benches,
        "generate",
        help="characters per second of generation",
        description=(
            "Generate --length characters in each of --batch-size streams and print chars/s. "
            "Without --run: a random model of the tutorial's size (Embedding 256, GRU 1024)."
        ),
        examples=(
            "char-rnn bench generate --batch-size 1 --length 2000",
            "char-rnn bench generate --batch-size 64 --length 500 --engine reference",
        ),
    )
    p.add_argument("--batch-size", type=int, default=1, help="streams generated together (default 1)")
    p.add_argument("--length", type=int, default=1000, help="characters per stream (default 1000)")
    _add_engine(p)
    p.add_argument("--run", help="a run folder's model instead of the random one")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--busy", type=int, default=0, metavar="K", help=BUSY_HELP)
    p.set_defaults(handler=cmd_bench_generate)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Character-level language models: train on any text, generate more of it.",
        epilog=_examples(
            "char-rnn train --max-time 300 --out runs/shakespeare",
            'char-rnn generate runs/shakespeare --start "ROMEO:"',
            "char-rnn eval runs/shakespeare",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(commands)
    _add_generate(commands)
    _add_eval(commands)
    _add_score(commands)
    _add_serve(commands)
    _add_export(commands)
    _add_plot(commands)
    _add_info(commands)
    _add_bench(commands)
    return parser


# ---- commands ------------------------------------------------------------------------

# The serve flags that are plain ServerConfig fields (--allow-host and --cors-origin repeat).
SERVE_FLAGS = ("host", "port", "max_length", "max_start", "max_batch", "max_queue", "queue_timeout",
               "timeout", "grace_period")  # fmt: skip

# What `bench train` varies: the model's shape, the batch and the precision.
BENCH_TRAIN_FLAGS = ("cell", "embedding_dim", "units", "layers", "batch_size", "seq_length", "precision")


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train_run
    from .train.distributed import launched_rank

    follower = launched_rank() > 0  # under torchrun, rank 0 speaks for every process
    if follower:
        logging.getLogger("char_rnn").setLevel(logging.WARNING)
    options = {name: getattr(args, name) for name in field_names(ModelConfig) | field_names(TrainConfig)
               if hasattr(args, name)}  # fmt: skip
    result = train_run(preset=args.preset, **options)
    summary = f"run {result.run}: step {result.step}, stopped by {result.stopped}"
    if result.already_complete:
        summary = (f"run {result.run} is complete: step {result.step}, stopped by {result.stopped}; "
                   "nothing to do")  # fmt: skip
    if result.val is not None:
        summary += f", validation loss {result.val.loss:.4f} ({result.val.bpc:.3f} bpc)"
    if not follower:
        print(summary)
    return {"SIGINT": 130, "SIGTERM": 143}.get(result.stopped, 0)


def _sample_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": tuple(args.stop),
    }


def _adapt_config(args: argparse.Namespace, asked: bool, flag: str) -> AdaptConfig | None:
    """The AdaptConfig the --adapt-* flags give, or None when adaptation was not asked;
    an --adapt-* flag without it is a usage error, not a flag silently ignored."""
    given = {name: value for name in field_names(AdaptConfig) if (value := getattr(args, name)) is not None}
    if not asked:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{flags} tune adaptation: give {flag} too")
        return None
    return AdaptConfig(**given)


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import CharRNN
    from .config import SampleConfig

    config = SampleConfig(start=args.start or "\n", length=args.length, num_samples=args.num_samples,
                          **_sample_options(args))  # fmt: skip
    if args.beam is not None and (config.num_samples != 1 or args.engine == "onnx" or config.stop):
        raise UsageError("--beam finds one continuation with the model itself, not an engine; "
                         "drop --num-samples, --stop and --engine onnx")  # fmt: skip
    adapt = _adapt_config(args, args.adapt_to is not None, "--adapt-to FILE")
    model = CharRNN.load(args.run, which=args.checkpoint, device=args.device, engine=args.engine,
                         threads=args.threads, ensemble=args.ensemble)  # fmt: skip
    if adapt is not None:
        from .adapt import continuation_start
        from .data.text import read_text

        text = read_text(args.adapt_to)
        model = model.adapted(text, adapt)
        config = dataclasses.replace(config, start=args.start or continuation_start(text))
    start = args.start if model.items else config.start
    model.vocab.check(start or "", "the start string")
    out = sys.stdout
    if args.beam is not None:
        if model.items:
            raise UsageError("--beam continues one text; this run was trained on items")
        print(model.beam_search(config.start, config.length, args.beam).text)
        return 0
    if args.novel_only and not model.items:
        raise UsageError("--novel-only makes new items: this run was not trained on items (--items)")
    if config.num_samples == 1 and not (args.novelty or args.novel_only):
        out.write(start or "")
        for (ch,) in model.stream(start, length=config.length, **_sample_options(args)):
            out.write(ch)
            out.flush()
        out.write("\n")
        return 0
    if args.novel_only:
        texts = model.generate_novel(
            config.num_samples, start=start, length=config.length, **_sample_options(args)
        )
    else:
        texts = model.generate(start, config.length, num_samples=config.num_samples, **_sample_options(args))
    if model.items:
        out.write(("\n\n" if model.items == "paragraph" else "\n").join(texts) + "\n")
    else:
        for i, text in enumerate(texts, 1):
            out.write(f"==> sample {i} <==\n{text}\n\n")
    if args.novelty:
        out.flush()
        _report_novelty(model, texts)
    return 0


def _report_novelty(model: Any, texts: list[str]) -> None:
    """Per sample, on stderr: its longest span found in the training text, and for items
    whether it is a training item; then the share of new items."""
    found = model.novelty(texts)
    for i, novelty in enumerate(found, 1):
        line = f"sample {i}: longest span in the training text {len(novelty.longest_copy)} characters"
        line += f" {novelty.longest_copy!r}" if novelty.longest_copy else ""
        if novelty.in_training is not None:
            line += ", a training item" if novelty.in_training else ", a new item"
        print(line, file=sys.stderr)
    if model.items:
        new = sum(not n.in_training for n in found)
        print(f"new items: {new} of {len(found)} ({new / len(found):.0%})", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from .api import CharRNN
    from .serve.server import is_loopback, serve

    options = {name: getattr(args, name) for name in SERVE_FLAGS}
    if args.max_concurrent is not None:
        print(f"{PROG}: warning: --max-concurrent is now called --max-batch", file=sys.stderr)
        options["max_batch"] = args.max_concurrent
    config = ServerConfig(allowed_hosts=tuple(args.allow_host), cors_origins=tuple(args.cors_origin),
                          **options)  # fmt: skip
    model = CharRNN.load(args.run, which=args.checkpoint, device=args.device, engine=args.engine)
    if not is_loopback(args.host):
        print(f"{PROG}: warning: listening on {args.host}: anyone who can reach this machine can use "
              "the model; the Host header must still be localhost or an --allow-host name",
              file=sys.stderr)  # fmt: skip

    def ready(url: str) -> None:
        print(f"serving {args.run} at {url} (Ctrl-C to stop)", flush=True)

    try:
        serve(model, config, description=os.path.basename(os.path.normpath(args.run)),
              access_log=not args.quiet, on_ready=ready)  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop
        print("stopped", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .onnx.export import export

    path = export(args.run, format=args.format, which=args.checkpoint, out=args.out, force=args.force)
    if args.format == "web":
        from .web.export import folder_size

        print(f"wrote {path} ({folder_size(path) / 1e6:.1f} MB); serve it with: "
              f"python -m http.server --directory {path}")  # fmt: skip
        return 0
    print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .run.curves import plot_run

    print(f"wrote {plot_run(args.run, args.out)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .run.info import describe_run

    info = describe_run(args.run)
    if args.json:
        print(json.dumps(info.as_dict(), ensure_ascii=False))
        return 0
    m = info.model
    parameters = f"{info.parameters:,} parameters" if info.parameters is not None else "no weights yet"
    print(f"run          {info.path}")
    dropout = f"dropout {m.get('dropout')}"
    if m.get("weight_drop"):
        dropout += f", weight drop {m['weight_drop']}"
    print(f"model        {m.get('cell', '?').upper()}, {m.get('layers')} x {m.get('units')} units, "
          f"embedding {m.get('embedding_dim')}, {dropout}: {parameters}")  # fmt: skip
    print(f"vocabulary   {info.vocab_size} characters: {info.vocab_preview}")
    if info.corpus:
        print(f"corpus       {info.corpus.get('source')} ({info.corpus.get('chars', 0):,} characters)")
    if info.items:
        print(f"items        {info.items.get('kind')}: {info.items.get('train_items', 0):,} for training, "
              f"{info.items.get('val_items', 0):,} for validation")  # fmt: skip
    if info.init_from:
        added = info.init_from.get("added_chars") or ""
        print(f"fine-tuned   from {info.init_from.get('run')}" + (f", adding {added!r}" if added else ""))
    minutes, seconds = divmod(round(info.seconds), 60)
    print(f"training     {info.steps:,} steps, {info.epochs} epoch(s), {minutes}m{seconds:02d}s"
          + (f", stopped by {info.stopped}" if info.stopped else ""))  # fmt: skip
    if info.last_train_loss is not None:
        print(f"train loss   {info.last_train_loss:.4f} (last logged)")
    if info.best_val_loss is not None:
        print(f"best val     {info.best_val_loss:.4f} ({info.best_val_loss / math.log(2):.3f} bpc) "
              f"at step {info.best_val_step:,}")  # fmt: skip
    print(f"checkpoints  {', '.join(info.checkpoints) or 'none'}")
    print(f"files        {', '.join(info.files) or 'none'}")
    return 0


def _busy_note(count: int) -> str:
    return f", beside {count} busy process{'es' if count != 1 else ''}" if count else ""


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from .busy import busy_cores, check_busy
    from .data.vocab import Vocab
    from .generate import open_engine
    from .generate.speed import measure_generation, tutorial_model
    from .threads import check_threads

    if args.batch_size < 1 or args.length < 1:
        raise UsageError("--batch-size and --length must be positive")
    check_threads(args.threads, "--threads")
    check_busy(args.busy, "--busy")
    if args.run:
        from .api import CharRNN

        loaded = CharRNN.load(args.run, engine=args.engine, threads=args.threads)
        engine, vocab, what = loaded.engine, loaded.vocab, args.run
    else:
        vocab = Vocab(chr(c) for c in range(32, 97))  # 65 characters, as tiny Shakespeare has
        engine = open_engine(args.engine, tutorial_model(vocab), vocab, threads=args.threads)
        what = "random tutorial-size model"
    with busy_cores(args.busy):
        speed = measure_generation(engine, vocab, batch_size=args.batch_size, length=args.length)
    chosen = getattr(engine, "threads", None)
    threads = f", {chosen.chosen} threads" if chosen is not None else ""
    print(f"generate {what}: engine {speed.engine}, {speed.batch_size} stream(s) x {speed.length} "
          f"characters in {speed.seconds:.2f} s: {speed.chars_per_s:,.0f} chars/s{threads}"
          f"{_busy_note(args.busy)}")  # fmt: skip
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from .busy import busy_cores, check_busy
    from .config import build_configs, with_vocab
    from .device import resolve_precision
    from .threads import check_threads
    from .train.speed import measure_training

    if args.steps < 1 or args.warmup < 0:
        raise UsageError("--steps must be positive and --warmup non-negative")
    check_threads(args.threads, "--threads")
    check_busy(args.busy, "--busy")
    options = {name: getattr(args, name) for name in BENCH_TRAIN_FLAGS}
    model_config, train_config = build_configs(args.preset, **options)
    model_config = with_vocab(model_config, 65)  # tiny Shakespeare's vocabulary
    import torch

    dtype = resolve_precision(train_config.precision, torch.device("cpu"))
    with busy_cores(args.busy):
        speed = measure_training(model_config, batch_size=train_config.batch_size,
                                 seq_length=train_config.seq_length, dtype=dtype, steps=args.steps,
                                 warmup=args.warmup, fused=args.rnn == "fused",
                                 threads=args.threads)  # fmt: skip
    m = model_config
    print(f"train {m.layers}x{m.cell.upper()} {m.units} (embedding {m.embedding_dim}), batch "
          f"{train_config.batch_size} x {train_config.seq_length}, "
          f"{str(dtype).replace('torch.', '')}, {'fused' if speed.fused else 'torch'} rnn, "
          f"{speed.threads} threads{_busy_note(args.busy)}")  # fmt: skip
    print(f"{speed.chars_per_s:,.0f} chars/s, {speed.gflops:,.1f} GFLOP/s = "
          f"{speed.peak_fraction:.0%} of the {speed.peak_gflops:,.0f} GFLOP/s GEMM peak measured "
          f"for {str(dtype).replace('torch.', '')}")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import CharRNN

    adapt = _adapt_config(args, args.adapt, "--adapt")
    model = CharRNN.load(args.run, which=args.checkpoint, device=args.device, threads=args.threads,
                         ensemble=args.ensemble)  # fmt: skip
    result = model.evaluate_file(args.data, split=args.split, window=args.window, encoding=args.encoding,
                                 adapt=adapt or False)  # fmt: skip
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        counted = f"{result.items:,} items, " if result.items else ""
        print(f"{result.what}: {counted}{result.chars:,} characters" + (" and ends" if result.items else ""))
        adapted = " adapted" if result.static is not None else ""
        print(f"loss{adapted} {result.loss:.4f} nats/char, {result.bpc:.4f} bits/char, "
              f"perplexity {result.perplexity:.3f}")  # fmt: skip
        if result.static is not None:
            lower = 1 - result.loss / result.static.loss
            print(f"loss static  {result.static.loss:.4f} nats/char, {result.static.bpc:.4f} bits/char "
                  f"(the same text read the same way, not adapting; adapted {lower:.1%} lower)")  # fmt: skip
        if result.windows is not None:
            print(f"loss over independent {result.window}-character windows: {result.windows.loss:.4f}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .api import CharRNN

    if (args.text is None) == (args.file is None):
        raise UsageError("give the text to score, or --file FILE (one of them)")
    if args.file is not None:
        from .data.text import read_text

        text = read_text(args.file, args.encoding)
    else:
        text = args.text
    score = CharRNN.load(args.run, which=args.checkpoint).score(text)
    if args.json:
        print(json.dumps(score.as_dict(), ensure_ascii=False))
        return 0
    for ch, bits in zip(score.chars, score.bits, strict=True):
        print(f"{'(end)' if ch is None else repr(ch):>8} {bits:7.3f}")
    counted = f" in {score.items:,} items" if score.items else ""
    print(f"{score.total_bits:.2f} bits over {len(score.bits):,} characters{counted}: "
          f"{score.bits_per_char:.4f} bits/char")  # fmt: skip
    return 0


# ---- entry point ------------------------------------------------------------------------


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "quiet", False):
            logging.getLogger("char_rnn").setLevel(logging.WARNING)
        command: Callable[[argparse.Namespace], int] = args.handler
        return command(args)
    except UsageError as error:
        return _fail(str(error), 2)
    except CharRNNError as error:
        return _fail(str(error), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}", 1)
    except Exception as error:  # the promise: one line, never a traceback
        if os.environ.get("CHAR_RNN_DEBUG"):
            raise
        return _fail(f"unexpected {type(error).__name__}: {error} (set CHAR_RNN_DEBUG=1 for "
                     "the traceback)", 1)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
