"""Shared fixtures: the offline Shakespeare copy, a small slice of it, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from char_rnn.config import ModelConfig, TrainConfig
from char_rnn.data.corpus import DATA_ENV, SHAKESPEARE_FILE
from char_rnn.data.encoded import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shakespeare_folder() -> Path:
    folder = Path(os.environ.get(DATA_ENV) or SHARED_DATA)
    if not (folder / SHAKESPEARE_FILE).is_file():
        pytest.skip(f"no offline copy of {SHAKESPEARE_FILE} (set {DATA_ENV})")
    return folder


# The two settings below hold for the whole session, set before any fixture: a module's
# fixture (a reference run, say) is made before a test's own fixtures, and one made with
# the user's cache measured its recurrent path there, where the test's runs measured theirs in
# the session's cache: the two could choose differently, and the runs then differed.
@pytest.fixture(scope="session", autouse=True)
def offline_shakespeare():
    """Point the `shakespeare` corpus at the offline copy, so no test needs the network."""
    folder = Path(os.environ.get(DATA_ENV) or SHARED_DATA)
    with pytest.MonkeyPatch.context() as patch:
        if (folder / SHAKESPEARE_FILE).is_file():
            patch.setenv(DATA_ENV, str(folder))
        yield


@pytest.fixture(scope="session")
def encoded_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("encoded-cache")


@pytest.fixture(scope="session", autouse=True)
def private_encoded_cache(encoded_cache):
    """Encoded corpora and the recurrent-path choices go to a folder of this test session,
    never the user cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(encoded_cache))
        yield


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return (shakespeare_folder() / SHAKESPEARE_FILE).read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path, shakespeare_text) -> Path:
    """The first 30,000 characters of Shakespeare (all 65 characters do not occur in it)."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare_text[:30_000], encoding="utf-8")
    return path


TINY_MODEL = ModelConfig(embedding_dim=16, units=48, layers=1, cell="gru", dropout=0.0)


def tiny_train_config(data: Path, out: Path, **changes) -> TrainConfig:
    values = dict(
        data=str(data), out=str(out), batch_size=8, seq_length=32, log_every=10,
        epochs=1, seed=0, quiet=True, precision="fp32", lr=1e-3, lr_schedule="constant", warmup_steps=0,
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run `python -m char_rnn ARGS` as a user would, returning the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "char_rnn", *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout, **kwargs,
    )  # fmt: skip


TINY_FLAGS = (
    "--cell", "gru", "--layers", "1", "--dropout", "0", "--embedding-dim", "16", "--units", "48",
    "--batch-size", "8", "--seq-length", "32", "--lr", "1e-3", "--lr-schedule", "constant",
    "--warmup-steps", "0", "--log-every", "10", "--precision", "fp32",
)  # fmt: skip
