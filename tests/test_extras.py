"""The optional extras (serve, onnx, plot, tensorboard): the core imports none of them, and a command
that needs a missing one says in one line which pip command installs it.

A missing package is simulated in a real subprocess of `python -m char_rnn` by a finder
at the front of sys.meta_path that refuses to import it, as an interpreter without it would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_FLAGS
from test_server import shared_tiny_run

EXTRAS = ("fastapi", "onnx", "onnxruntime", "matplotlib", "tensorboard")

# `python -m char_rnn ARGS` with the top-level packages named in sys.argv[1] (comma-separated)
# unimportable; on the way out, whatever the exit, the last line of stderr lists the extras
# that were imported.
WITHOUT = """
import runpy, sys

refused = set(sys.argv.pop(1).split(",")) - {""}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in refused:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Refuse())
try:
    runpy.run_module("char_rnn", run_name="__main__", alter_sys=True)
finally:
    sys.stderr.write(f"imported extras: {sorted(m for m in EXTRAS if m in sys.modules)}\\n")
""".replace("EXTRAS", repr(EXTRAS))


def run_without(refused: tuple[str, ...], *args: str | Path, timeout: float = 300):
    """`python -m char_rnn ARGS` in an interpreter that cannot import `refused`; returns the
    CompletedProcess with the final 'imported extras' line taken off stderr."""
    command = [sys.executable, "-c", WITHOUT, ",".join(refused), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    *lines, listed = done.stderr.splitlines() or [""]
    assert listed.startswith("imported extras: "), done.stderr
    done.stderr = "".join(f"{line}\n" for line in lines)
    done.imported = listed.removeprefix("imported extras: ")
    return done


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shakespeare_text) -> Path:
    return shared_tiny_run(tmp_path_factory, shakespeare_text)


@pytest.mark.parametrize(
    "statement", ["import char_rnn", "import char_rnn.cli", "from char_rnn import CharRNN, train"]
)
def test_the_core_imports_none_of_the_extras(statement):
    listing = f"print(sorted(m for m in {EXTRAS!r} if m in sys.modules))"
    command = [sys.executable, "-c", f"{statement}; import sys; {listing}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_help_imports_none_of_the_extras():
    done = run_without((), "--help")
    assert done.returncode == 0 and "examples:" in done.stdout
    assert done.imported == "[]"


@pytest.mark.parametrize(
    "refused, args, what, extra",
    [
        (("fastapi",), ("serve", "{run}"), "char-rnn serve", "serve"),
        (("uvicorn",), ("serve", "{run}"), "char-rnn serve", "serve"),
        (("onnx",), ("export", "{run}", "--out", "{tmp}/m.onnx"), "char-rnn export", "onnx"),
        (
            ("onnxruntime",),
            ("generate", "{run}", "--engine", "onnx"),
            "the onnx engine (--engine onnx)",
            "onnx",
        ),
        (("matplotlib",), ("plot", "{run}", "--out", "{tmp}/c.png"), "char-rnn plot", "plot"),
        (
            ("tensorboard",),
            ("train", "--data", "{run}/../small.txt", "--out", "{tmp}/run", "--tensorboard", "{tmp}/tb"),
            "--tensorboard",
            "tensorboard",
        ),
    ],
    ids=["serve without fastapi", "serve without uvicorn", "export", "engine onnx", "plot", "tensorboard"],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(tiny_run, tmp_path, refused, args, what, extra):
    done = run_without(refused, *(a.format(run=tiny_run, tmp=tmp_path) for a in args))
    assert done.returncode == 1
    assert (
        done.stderr == f"char-rnn: error: {what} needs the {extra} extra: pip install 'char-rnn[{extra}]'\n"
    )
    assert done.stdout == "" and not list(tmp_path.iterdir())  # nothing written


def test_training_without_matplotlib_skips_the_curves_with_one_line(small_corpus, tmp_path):
    run = tmp_path / "run"
    flags = ("--data", small_corpus, "--out", run, "--max-steps", "3", "--quiet", *TINY_FLAGS)
    done = run_without(("matplotlib",), "train", *flags)
    assert done.returncode == 0, done.stderr
    assert "step 3" in done.stdout
    assert done.stderr.count("\n") == 1 and "pip install 'char-rnn[plot]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert (run / "model.safetensors").is_file() and not (run / "curves.png").exists()
