"""The defaults serve texts other than Shakespeare: a short text, a long one, and a vocabulary
of thousands of CJK characters (the seed document is Chinese)."""

import json
import math
from pathlib import Path

import pytest
from conftest import run_cli

from char_rnn.config import TrainConfig
from char_rnn.data.batches import MIN_BATCHES_PER_EPOCH, batches_per_epoch
from char_rnn.run.folder import RunFolder
from char_rnn.train.plan import AUTO_STEPS, LONG_EPOCH_EVERY, fit_to_text

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_03cfdf5cc280cd57.txt"


def test_shakespeare_keeps_the_batch_and_plans_epochs_for_enough_steps():
    fitted = fit_to_text(TrainConfig(), 1_003_854)
    per_epoch = batches_per_epoch(1_003_854, "stateful", 64, 100)
    assert fitted.batch_size == 64
    assert fitted.epochs == math.ceil(AUTO_STEPS / per_epoch)
    assert fitted.eval_every_steps is None and fitted.checkpoint_every_steps is None
    assert fit_to_text(fitted, 1_003_854) == fitted


@pytest.mark.parametrize("batching", ["stateful", "shuffle"])
def test_a_short_text_gets_a_narrower_batch_with_several_steps_an_epoch(batching):
    config = TrainConfig(batching=batching)
    fitted = fit_to_text(config, 5_000)
    assert 1 <= fitted.batch_size < 64
    steps = batches_per_epoch(5_000, batching, fitted.batch_size, 100)
    assert steps >= MIN_BATCHES_PER_EPOCH
    assert batches_per_epoch(5_000, batching, fitted.batch_size + 1, 100) < MIN_BATCHES_PER_EPOCH
    assert fitted.epochs * steps >= AUTO_STEPS


def test_a_long_text_is_validated_and_saved_within_the_epoch():
    fitted = fit_to_text(TrainConfig(), 500_000_000)
    assert fitted.epochs == 1
    assert fitted.eval_every_steps == fitted.checkpoint_every_steps == LONG_EPOCH_EVERY
    told = fit_to_text(TrainConfig(epochs=3, eval_every_steps=50), 500_000_000)
    assert told.epochs == 3 and told.eval_every_steps == 50


@pytest.mark.slow  # kept out of the default run for its time budget (pytest -m slow runs it)
def test_a_short_poem_trains_and_generates_with_the_defaults(tmp_path, shakespeare_text):
    poem = tmp_path / "poem.txt"
    poem.write_text(shakespeare_text[:6_000], encoding="utf-8")
    run = tmp_path / "run"
    done = run_cli("train", "--data", poem, "--out", run, "--max-steps", "40", "--log-every", "10", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "short for a batch of 64" in done.stderr
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["batch_size"] < 64 and saved["epochs"] > 10
    losses = [m["loss"] for m in RunFolder(run).read_metrics() if m["kind"] == "train"]
    assert losses[-1] < losses[0]
    sample = run_cli("generate", run, "--length", "200", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert set(sample.stdout) <= set(shakespeare_text[:6_000]) | {"\n"}


def cjk_corpus(path: Path, distinct: int = 3_000) -> str:
    """The seed document, then a glossary that uses `distinct` CJK characters in patterned
    lines, so the vocabulary runs to thousands and there is structure to learn."""
    base = SEED.read_text(encoding="utf-8") if SEED.exists() else ""
    chars = [chr(0x4E00 + i) for i in range(distinct)]
    lines = [
        f"{chars[i]}{chars[(i * 7) % distinct]}：第{chars[i % 10]}字，{chars[(i + 1) % distinct]}。"
        for i in range(distinct)
    ]
    text = base + "\n" + "\n".join(lines * 2) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


@pytest.mark.slow  # about 12-35 s on 2 cores: `pytest -m slow` runs it
def test_thousands_of_cjk_characters_train_evaluate_and_generate(tmp_path):
    corpus = tmp_path / "cjk.txt"
    text = cjk_corpus(corpus)
    vocab = len(set(text))
    assert vocab > 3_000
    run = tmp_path / "run"
    done = run_cli(
        "train", "--data", corpus, "--out", run, "--batch-size", "16", "--seq-length", "64",
        "--max-steps", "60", "--warmup-steps", "10", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    val = [m["val_loss"] for m in RunFolder(run).read_metrics() if m["kind"] == "val"]
    assert val[-1] < 0.75 * math.log(vocab)  # well below a uniform guess over the vocabulary
    evaluated = run_cli("eval", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] < 0.75 * math.log(vocab)
    sample = run_cli("generate", run, "--start", "第", "--length", "100", "--seed", "0")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("第") and set(sample.stdout) <= set(text) | {"\n"}
