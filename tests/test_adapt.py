"""Dynamic evaluation (adapt.py): score first, learn after; the run folder never changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from char_rnn import AdaptConfig, CharRNN, UsageError
from char_rnn.adapt import (
    RMS_FLOOR,
    AdaptiveReader,
    continuation_start,
    evaluate_adapted,
    gradient_statistics,
    segments,
)
from char_rnn.config import ModelConfig
from char_rnn.model.network import CharRNNModel

SEGMENT = 20
# Large enough that one update visibly changes the next segment's loss.
EAGER = AdaptConfig(adapt_segment=SEGMENT, adapt_lr=0.05, adapt_decay=0.01, adapt_stats_chars=200)


@pytest.fixture(autouse=True)
def one_thread():
    """Adaptation reads one stream, as the CLI does with one thread: on a busy machine a
    second thread makes each of its small operations wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def random_model():
    torch.manual_seed(0)
    return CharRNNModel(ModelConfig(vocab_size=13, embedding_dim=8, units=16, layers=1, cell="lstm")).eval()


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 13, n).astype(np.uint8)


def segment_nats(model: CharRNNModel, x: torch.Tensor, y: torch.Tensor, state=None):
    with torch.no_grad():
        logits, state = model(x, state)
        return float(F.cross_entropy(logits[0], y[0], reduction="sum")), state


def test_every_segment_is_scored_by_the_weights_of_the_updates_before_it_only(random_model):
    stats = gradient_statistics(random_model, random_ids(201, seed=1), SEGMENT)
    ids = random_ids(SEGMENT * 6 + 1)
    result = evaluate_adapted(random_model, ids, stats, EAGER)
    pieces = list(segments(ids, SEGMENT))
    # Segment 0 is scored before any update: exactly the trained weights' loss.
    assert result.segment_nats[0] == pytest.approx(segment_nats(random_model, *pieces[0])[0], rel=1e-6)
    # Segment k by hand, with the weights after the k updates from segments 0..k-1 and the
    # state they carried: learning from a segment before scoring it would not match.
    for k in (1, 4):
        reader = AdaptiveReader(random_model, stats, EAGER)
        for x, y in pieces[:k]:
            reader.read(x, y)
        expected, _ = segment_nats(reader.model, *pieces[k], reader.state)
        assert result.segment_nats[k] == pytest.approx(expected, rel=1e-5)
        static_state = None
        for x, y in pieces[: k + 1]:
            static, static_state = segment_nats(random_model, x, y, static_state)
        assert abs(result.segment_nats[k] - static) > 1e-3  # the weights did learn


def test_a_segment_read_twice_is_not_known_the_first_time(random_model):
    """A segment of random ids repeated: the first copy must score as the trained weights
    score it (a reader that learned first would already know it); the second copy, read by
    weights that have learned from the first, scores better."""
    stats = gradient_statistics(random_model, random_ids(201, seed=1), SEGMENT)
    piece = random_ids(SEGMENT)
    ids = np.concatenate([piece, piece, piece[:1]])
    result = evaluate_adapted(random_model, ids, stats, EAGER)
    first, second = result.segment_nats
    x, y = next(segments(ids, SEGMENT))
    assert first == pytest.approx(segment_nats(random_model, x, y)[0], rel=1e-6)
    assert second < first


def test_one_update_is_the_rms_scaled_gradient(random_model):
    stats = gradient_statistics(random_model, random_ids(201, seed=1), SEGMENT)
    x, y = next(segments(random_ids(SEGMENT + 1), SEGMENT))
    logits, _ = random_model(x)
    loss = F.cross_entropy(logits[0], y[0])
    (grad,) = torch.autograd.grad(loss, [random_model.head.bias])
    rms = stats.rms["head.bias"]
    expected = random_model.head.bias.detach() - EAGER.adapt_lr * grad / (rms + RMS_FLOOR * rms.mean())
    reader = AdaptiveReader(random_model, stats, EAGER)
    reader.read(x, y)
    # No decay term yet: the weights were the trained ones when the pull was measured.
    torch.testing.assert_close(reader.model.head.bias.detach(), expected)


def test_the_model_itself_is_untouched(random_model):
    before = {k: v.clone() for k, v in random_model.state_dict().items()}
    stats = gradient_statistics(random_model, random_ids(201, seed=1), SEGMENT)
    evaluate_adapted(random_model, random_ids(101), stats, EAGER)
    for name, value in random_model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in random_model.parameters())


def test_the_start_after_an_adapted_text_is_its_end_from_a_line_start():
    text = "x" * 500 + "\nKING:\n" + "y" * 150
    assert continuation_start(text) == "KING:\n" + "y" * 150
    assert continuation_start("short text") == "short text"
    assert len(continuation_start("z" * 1000)) == 200


@pytest.mark.parametrize(
    "values",
    [{"adapt_lr": -1.0}, {"adapt_segment": 0}, {"adapt_decay": 2.0}, {"adapt_lr": float("nan")},
     {"adapt_segment": 50, "adapt_stats_chars": 50}],
)  # fmt: skip
def test_bad_hyper_parameters_are_refused(values):
    with pytest.raises(UsageError, match="adapt_"):
        AdaptConfig(**values)


# ---- a trained run, through the API and the command line -----------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_text):
    folder = tmp_path_factory.mktemp("adapt")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare_text[:15_000], encoding="utf-8")
    run = folder / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        CharRNN.train(data=str(corpus), out=str(run), progress=False, max_steps=40, embedding_dim=16,
                      units=48, layers=1, cell="gru", dropout=0.0, batch_size=8, seq_length=32,
                      precision="fp32", lr=1e-3, lr_schedule="constant", warmup_steps=0)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    # A passage the model has not been trained on, repeated: the second reading can use the first.
    passage = shakespeare_text[40_000:40_600]
    (folder / "passage.txt").write_text(passage + passage, encoding="utf-8")
    return run, folder


SMALL = AdaptConfig(adapt_stats_chars=1_000)
SMALL_FLAGS = ("--adapt-stats-chars", "1000")


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_adaptation_lowers_the_loss_of_a_text_that_repeats_itself(trained):
    run, folder = trained
    text = (folder / "passage.txt").read_text(encoding="utf-8")
    # A tiny model on a tiny text: the step size the defaults' model was tuned to is too
    # small to show here in a few segments, so this reads with the earlier, larger one.
    result = CharRNN.load(run).evaluate(text, adapt=AdaptConfig(adapt_stats_chars=1_000, adapt_lr=0.002))
    assert result.loss < result.static.loss
    half = len(result.segment_nats) // 2
    first, second = sum(result.segment_nats[:half]), sum(result.segment_nats[half:])
    assert second < 0.97 * first  # the second copy is read by weights that learned the first


def test_the_same_config_gives_the_same_figures(trained):
    run, folder = trained
    text = (folder / "passage.txt").read_text(encoding="utf-8")
    a = CharRNN.load(run).evaluate(text, adapt=SMALL)
    b = CharRNN.load(run).evaluate(text, adapt=SMALL)
    assert a.segment_nats == b.segment_nats and a.static == b.static


def test_eval_adapt_reports_both_figures_and_writes_nothing(trained):
    run, _ = trained
    before = file_hashes(run)
    done = run_cli("eval", run, "--adapt", *SMALL_FLAGS, "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["chars"] == 1_500 - 1  # the validation part, every prediction
    assert figures["loss"] < figures["static_loss"]
    plain = run_cli("eval", run, "--adapt", *SMALL_FLAGS)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[1].startswith(f"loss adapted {figures['loss']:.4f}")
    assert lines[2].startswith(f"loss static  {figures['static_loss']:.4f}")
    assert file_hashes(run) == before


def test_generate_adapt_to_continues_the_file_and_writes_nothing(trained):
    run, folder = trained
    before = file_hashes(run)
    passage = folder / "passage.txt"
    text = passage.read_text(encoding="utf-8")
    done = run_cli("generate", run, "--adapt-to", passage, *SMALL_FLAGS, "--length", "40", "--seed", "1")
    assert done.returncode == 0, done.stderr
    start = continuation_start(text)
    assert done.stdout.startswith(start) and len(done.stdout) == len(start) + 40 + 1
    api = CharRNN.load(run).generate(length=40, seed=1, adapt_to=text, adapt=SMALL)
    assert done.stdout == api + "\n"
    assert file_hashes(run) == before


@pytest.mark.parametrize(
    "args, status, message",
    [
        (("generate", "--adapt-to", "missing.txt"), 1, "missing.txt is not a file"),
        (("generate", "--adapt-to", "greek.txt"), 1, "not in this model's vocabulary"),
        (("eval", "--adapt-lr", "0.1"), 2, "--adapt-lr tune adaptation: give --adapt too"),
    ],
)
def test_bad_adaptation_input_gets_one_line(trained, args, status, message):
    run, folder = trained
    (folder / "greek.txt").write_text("ROMEO: Ωμέγα\n", encoding="utf-8")
    command, *rest = args
    done = run_cli(command, run, *rest, cwd=folder)
    assert done.returncode == status
    assert done.stderr.startswith("char-rnn: error:") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
