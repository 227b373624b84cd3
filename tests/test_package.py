"""The package as the index would ship it: `python -m build` makes an sdist and a wheel that
`twine check` passes, and the wheel, installed into a fresh virtual environment, trains and
generates (the C++ time loop travels as source and is built there on first use). Slow: it
builds, creates a venv and installs into it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_FLAGS

import char_rnn

pytestmark = pytest.mark.slow


# The fresh environment must see only what is installed in it, not this checkout's sources.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*command, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=CLEAN_ENV
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def test_the_built_wheel_installs_trains_and_generates(tmp_path, small_corpus):
    pytest.importorskip("build")
    pytest.importorskip("twine")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, REPO)
    wheel = next(dist.glob("char_rnn-*.whl"))
    sdist = next(dist.glob("char_rnn-*.tar.gz"))
    assert wheel.name == f"char_rnn-{char_rnn.__version__}-py3-none-any.whl"  # one version string
    checked = run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    assert checked.stdout.count("PASSED") == 2, checked.stdout

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"char_rnn-{char_rnn.__version__}.dist-info/METADATA").decode()
    assert {"char_rnn/model/native/cells.cpp", "char_rnn/web/static/sampler.js"} <= names
    assert f"char_rnn-{char_rnn.__version__}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata
    assert not re.findall(r"!\[[^\]]*\]\((?!https?://)", metadata)  # no picture the index cannot show

    # A fresh environment: torch from the wheel this machine already has (pip's find-links),
    # never a download of a CUDA build; the rest from the package index or its local mirror.
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    pip = (python, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    torch_version = torch.__version__.split("+")[0]
    run(*pip, "--no-deps", "--no-index", f"torch=={torch_version}")
    run(*pip, f"torch=={torch_version}", wheel)

    char_rnn_cli = env / "bin" / "char-rnn"
    out = tmp_path / "run"
    trained = run(
        char_rnn_cli,
        "train",
        "--data",
        small_corpus,
        "--out",
        out,
        "--max-steps",
        "20",
        *TINY_FLAGS,
        cwd=tmp_path,
    )
    assert "step 20, stopped by max_steps" in trained.stdout, trained.stdout
    generated = run(
        char_rnn_cli, "generate", out, "--start", "ROMEO:", "--length", "100", "--seed", "1", cwd=tmp_path
    )
    assert generated.stdout.startswith("ROMEO:") and len(generated.stdout) == len("ROMEO:") + 100 + 1
    version = run(
        python, "-c", "import char_rnn; print(char_rnn.__version__, char_rnn.__file__)", cwd=tmp_path
    )
    assert version.stdout.startswith(char_rnn.__version__) and str(env) in version.stdout
