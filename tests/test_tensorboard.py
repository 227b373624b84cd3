"""`--tensorboard DIR`: the event files, read back with TensorBoard's own reader, hold every
tag with the figures that metrics.jsonl holds; without the extra, one line."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_MODEL, tiny_train_config

from char_rnn import train
from char_rnn.run.folder import RunFolder
from char_rnn.train.board import BITS, SAMPLE_LENGTH

pytest.importorskip("tensorboard")

TAGS = (
    "loss/train", "bits_per_char/train", "loss/validation", "bits_per_char/validation",
    "learning_rate", "chars_per_s",
)  # fmt: skip


def test_the_event_files_hold_every_tag(small_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    config = tiny_train_config(
        small_corpus, tmp_path / "run", max_steps=20, log_every=5, eval_every_steps=10, tensorboard=str(logs)
    )
    result = train(TINY_MODEL, config)
    assert result.step == 20

    events = EventAccumulator(str(logs), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert set(TAGS) <= set(tags["scalars"]), tags
    assert "sample/text_summary" in tags["tensors"], tags

    records = RunFolder(tmp_path / "run").read_metrics()
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    val_steps = [r["step"] for r in records if r["kind"] == "val"]
    assert train_steps == [5, 10, 15, 20] and val_steps == [10, 20]
    assert [e.step for e in events.Scalars("loss/train")] == train_steps
    assert [e.step for e in events.Scalars("loss/validation")] == val_steps
    val_loss = [r["val_loss"] for r in records if r["kind"] == "val"]
    logged = [e.value for e in events.Scalars("loss/validation")]
    assert logged == pytest.approx(val_loss, rel=1e-6)
    bits = [e.value for e in events.Scalars(BITS["loss/validation"])]
    assert bits == pytest.approx([v / math.log(2) for v in val_loss], rel=1e-6)
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert [e.value for e in events.Scalars("learning_rate")] == pytest.approx(lrs)
    assert all(e.value > 0 for e in events.Scalars("chars_per_s"))

    samples = events.Tensors("sample/text_summary")
    assert [e.step for e in samples] == val_steps
    text = samples[-1].tensor_proto.string_val[0].decode("utf-8")
    body = text.removeprefix("```\n").removesuffix("\n```")
    assert len(body) == 1 + SAMPLE_LENGTH and body[0] == "\n"
    assert set(body) <= set(small_corpus.read_text(encoding="utf-8"))


def test_the_sample_does_not_change_training(small_corpus, tmp_path):
    """The same run with and without TensorBoard ends with the same weights."""

    def trained(out, **changes):
        config = tiny_train_config(small_corpus, tmp_path / out, max_steps=12, eval_every_steps=4, **changes)
        return train(TINY_MODEL, config)

    plain = trained("plain")
    logged = trained("logged", tensorboard=str(tmp_path / "tb"))
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == (
        tmp_path / "logged" / "model.safetensors"
    ).read_bytes()
    assert plain.val.loss == logged.val.loss
