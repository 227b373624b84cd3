import json
import math

import pytest
from conftest import TINY_MODEL, tiny_train_config

from char_rnn.cli import main
from char_rnn.config import ModelConfig
from char_rnn.errors import CharRNNError
from char_rnn.run.folder import RunFolder
from char_rnn.train import train
from char_rnn.train.schedule import learning_rate


def test_loss_falls_and_every_figure_is_logged(small_corpus, tmp_path):
    result = train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", epochs=2))
    metrics = RunFolder(tmp_path / "run").read_metrics()
    steps = [m for m in metrics if m["kind"] == "train"]
    assert steps[0]["loss"] > steps[-1]["loss"] + 0.5
    assert all(m["chars_per_s"] > 0 for m in steps)
    epochs = [m for m in metrics if m["kind"] == "epoch_train"]
    assert [m["epoch"] for m in epochs] == [1, 2]
    assert all(math.isclose(m["train_bpc"], m["train_loss"] / math.log(2)) for m in epochs)
    vals = [m for m in metrics if m["kind"] == "val"]
    assert len(vals) == 2 and vals[-1]["val_loss"] < math.log(len(set(small_corpus.read_text())))
    assert result.stopped == "epochs" and result.epoch == 2
    assert result.best_val_loss == min(v["val_loss"] for v in vals)


def test_run_folder_layout(small_corpus, tmp_path):
    train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", max_steps=20))
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["units"] == 48 and config["model"]["vocab_size"] == len(config["vocab"])
    assert config["vocab"] == sorted(config["vocab"])
    assert config["train"]["max_steps"] == 20 and "torch" in config["versions"]
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (run / name).is_file()
    (checkpoint,) = RunFolder(run).complete_checkpoints()
    assert checkpoint.name == "step-000000020"
    assert {p.name for p in checkpoint.iterdir()} == {
        "model.safetensors", "trainer.safetensors", "manifest.json"
    }  # fmt: skip


def test_existing_run_is_not_overwritten(small_corpus, tmp_path):
    config = tiny_train_config(small_corpus, tmp_path / "run", max_steps=5)
    train(TINY_MODEL, config)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(CharRNNError, match="already holds a run"):
        train(TINY_MODEL, config)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("batching", ["stateful", "shuffle"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(small_corpus, tmp_path, batching):
    model = ModelConfig(embedding_dim=16, units=32, layers=2, dropout=0.3)
    # max_steps is the interruption here, so the schedule must not depend on it: constant lr.
    common = dict(batching=batching, epochs=3, max_steps=130, warmup_steps=10)
    train(model, tiny_train_config(small_corpus, tmp_path / "whole", **common))
    # Stop twice, mid-epoch and across an epoch boundary, then resume to the same total.
    for stop in (37, 110, 130):
        resume = stop != 37
        train(
            model,
            tiny_train_config(
                small_corpus, tmp_path / "pieces", resume=resume, **{**common, "max_steps": stop}
            ),
        )
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    pieces = (tmp_path / "pieces" / "model.safetensors").read_bytes()
    assert whole == pieces


def test_a_run_saved_before_variational_dropout_resumes_as_it_was_trained(small_corpus, tmp_path):
    # Earlier versions drew a new dropout mask per character and wrote no variational_dropout
    # into config.json; such a run, resumed by the command line, continues that way, bit for bit.
    model = ModelConfig(embedding_dim=16, units=32, layers=2, dropout=0.3, variational_dropout=False)
    train(model, tiny_train_config(small_corpus, tmp_path / "whole", epochs=2, max_steps=40))
    train(model, tiny_train_config(small_corpus, tmp_path / "old", epochs=2, max_steps=20))
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model"]["variational_dropout"]
    config_path.write_text(json.dumps(config))
    assert RunFolder(tmp_path / "old").open().model.variational_dropout is False
    assert main(["train", "--out", str(tmp_path / "old"), "--resume", "--max-steps", "40", "--quiet"]) == 0
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "old" / "model.safetensors").read_bytes() == whole


def test_resume_refuses_a_different_corpus(small_corpus, tmp_path, shakespeare_text):
    train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", max_steps=5))
    other = tmp_path / "other.txt"
    other.write_text(shakespeare_text[-30_000:])
    with pytest.raises(CharRNNError, match="vocabulary mismatch|corpus mismatch"):
        train(TINY_MODEL, tiny_train_config(other, tmp_path / "run", resume=True, max_steps=10))
    same_chars = tmp_path / "same_chars.txt"
    same_chars.write_text(small_corpus.read_text()[::-1])
    with pytest.raises(CharRNNError, match="corpus mismatch"):
        train(TINY_MODEL, tiny_train_config(same_chars, tmp_path / "run", resume=True, max_steps=10))


def test_max_time_stops_and_checkpoints(small_corpus, tmp_path):
    result = train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", epochs=1000, max_time=2))
    assert result.stopped == "max_time"
    assert RunFolder(tmp_path / "run").latest_checkpoint().name == f"step-{result.step:09d}"


def test_checkpoints_every_n_steps_keep_the_last_three(small_corpus, tmp_path):
    train(
        TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", max_steps=50, checkpoint_every_steps=10)
    )
    names = [p.name for p in RunFolder(tmp_path / "run").complete_checkpoints()]
    assert names == ["step-000000050", "step-000000040", "step-000000030"]


def test_patience_stops_when_validation_stops_improving(small_corpus, tmp_path):
    result = train(
        TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", epochs=50, lr=0.5, patience=1)
    )
    assert result.stopped == "patience"
    assert result.epoch < 50


def test_divergence_is_reported_and_never_checkpointed(small_corpus, tmp_path):
    with pytest.raises(CharRNNError, match="not finite"):
        train(TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", lr=1e37, grad_clip=1e30))
    assert not list(RunFolder(tmp_path / "run").complete_checkpoints())


def test_cosine_schedule_warms_up_and_decays():
    config = tiny_train_config("x", "y", lr=1.0, lr_schedule="cosine", warmup_steps=10, min_lr_fraction=0.1)
    assert learning_rate(config, 0, 110) == pytest.approx(0.1)
    assert learning_rate(config, 9, 110) == pytest.approx(1.0)
    assert learning_rate(config, 60, 110) == pytest.approx(0.55)
    assert learning_rate(config, 110, 110) == pytest.approx(0.1)


def test_validation_fraction_zero_trains_without_validation(small_corpus, tmp_path):
    result = train(
        TINY_MODEL, tiny_train_config(small_corpus, tmp_path / "run", val_fraction=0.0, max_steps=5)
    )
    assert result.val is None


def test_cosine_follows_the_time_budget_when_it_runs_out_first():
    config = tiny_train_config("x", "y", lr=1.0, lr_schedule="cosine", min_lr_fraction=0.0)
    assert learning_rate(config, 10, 1000, time_fraction=0.5) == pytest.approx(0.5)
    assert learning_rate(config, 10, 1000, time_fraction=1.0) == pytest.approx(0.0)
    assert learning_rate(config, 500, 1000, time_fraction=0.1) == pytest.approx(0.5)
