"""Lists of items learned, scored and generated whole; fine-tuning; scoring; novelty."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_FLAGS, run_cli

from char_rnn import CharRNN
from char_rnn.config import ModelConfig
from char_rnn.data.corpus import load_corpus
from char_rnn.data.items import IGNORED, ITEM_MARK, ItemBatches, find_items, split_items
from char_rnn.data.vocab import Vocab
from char_rnn.evaluate import evaluate_items
from char_rnn.model.network import CharRNNModel
from char_rnn.novelty import CopyIndex
from char_rnn.run.folder import RunFolder
from char_rnn.train.fine_tune import start_from

TINY = dict(cell="gru", layers=1, units=48, embedding_dim=16, dropout=0.0, precision="fp32", quiet=True)


def made_up_names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    onsets, vowels, codas = (
        ["b", "d", "k", "l", "m", "r", "s", "t"],
        ["a", "e", "i", "o"],
        ["n", "s", "", "l"],
    )
    return [
        "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3))
        ).title()
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def names_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_text("\n".join(made_up_names(1500)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def names_run(names_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "names"
    run_cli_ok("train", "--data", names_file, "--items", "--out", out, *TINY_FLAGS, "--lr", "3e-3",
               "--max-steps", "80", "--batch-size", "32")  # fmt: skip
    return out


def run_cli_ok(*args):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def items_of(text: str, kind: str) -> list[str]:
    vocab = Vocab(set(text) | {ITEM_MARK})
    found = find_items(vocab.encode(text), vocab, kind)
    return [vocab.decode(found.item(i)) for i in range(len(found))]


def test_lines_and_paragraphs_are_found_without_blank_ones_or_line_ends():
    text = "Ann\r\n\n  \nBob Lee\nCy\n\n\nroses are red\nviolets blue\n \nthe end"
    assert items_of(text, "line") == ["Ann", "Bob Lee", "Cy", "roses are red", "violets blue", "the end"]
    assert items_of(text, "paragraph") == ["Ann", "Bob Lee\nCy", "roses are red\nviolets blue", "the end"]


def test_the_validation_items_are_a_seeded_random_tenth():
    vocab = Vocab("abc\n" + ITEM_MARK)
    items = find_items(vocab.encode("\n".join(["a", "b", "c", "ab", "bc"] * 20)), vocab, "line")
    train, val = split_items(items, 0.1, seed=3)
    assert (len(train), len(val)) == (90, 10)
    assert not set(train.starts) & set(val.starts)
    assert list(val.starts) != list(items.starts[-10:])  # not the tail of the file
    assert list(split_items(items, 0.1, seed=3)[1].starts) == list(val.starts)
    assert list(split_items(items, 0.1, seed=4)[1].starts) != list(val.starts)


def test_each_epoch_holds_every_item_once_each_whole_from_its_mark():
    names = made_up_names(400)
    vocab = Vocab(set("\n".join(names)) | {ITEM_MARK})
    items = find_items(vocab.encode("\n".join(names)), vocab, "line")
    batches = ItemBatches(items, batch_size=8, seq_length=16, seed=0)
    mark = vocab.index(ITEM_MARK)
    for epoch in (0, 1):
        seen = []
        for index in range(batches.batches_per_epoch):
            x, y = batches.get(epoch, index)
            assert x.shape[0] * x.shape[1] <= 8 * 16
            for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
                length = row_y.index(mark)
                assert row_x[0] == mark and row_x[1 : length + 1] == row_y[:length]
                assert all(t == IGNORED for t in row_y[length + 1 :])
                seen.append(vocab.decode(row_y[:length]))
        assert sorted(seen) == sorted(names)
    assert batches.get(1, 0)[0].tolist() == batches.get(1, 0)[0].tolist()
    assert 0 <= batches.padding_fraction < 0.2


def test_item_loss_counts_each_character_and_one_end_per_item_from_a_zero_state():
    torch.manual_seed(0)
    vocab = Vocab("abc\n" + ITEM_MARK)
    model = CharRNNModel(ModelConfig(vocab_size=len(vocab), embedding_dim=8, units=16, layers=1, cell="lstm"))
    model.eval()
    text = "abc\nb\ncab\n\naa"
    result = evaluate_items(model, find_items(vocab.encode(text), vocab, "line"))
    total, count = 0.0, 0
    for item in ("abc", "b", "cab", "aa"):
        ids = torch.tensor(vocab.encode(ITEM_MARK + item + ITEM_MARK), dtype=torch.long)
        with torch.no_grad():
            logits, _ = model(ids[None, :-1])
        total += float(F.cross_entropy(logits[0], ids[1:], reduction="sum"))
        count += len(item) + 1
    assert result.chars == count == 13
    assert result.loss == pytest.approx(total / count, rel=1e-5)


def test_an_items_run_trains_evaluates_generates_and_scores_items(names_run, names_file):
    saved = json.loads((names_run / "config.json").read_text())
    assert saved["train"]["items"] == "line" and saved["items"]["val_items"] == 150
    assert ITEM_MARK in saved["vocab"]

    evaluated = json.loads(run_cli_ok("eval", names_run, "--json").stdout)
    assert evaluated["items"] == 150 and evaluated["loss"] < math.log(len(saved["vocab"]))
    whole = json.loads(run_cli_ok("eval", names_run, "--data", names_file, "--json").stdout)
    assert whole["items"] == 1500

    generated = run_cli_ok("generate", names_run, "--num-samples", "7", "--seed", "1", "--novelty")
    lines = generated.stdout.split("\n")
    assert len(lines) == 8 and lines[-1] == "" and ITEM_MARK not in generated.stdout
    assert generated.stderr.count("sample ") == 7 and "new items:" in generated.stderr
    started = run_cli_ok("generate", names_run, "--start", "Ka", "--seed", "2", "--length", "30")
    assert started.stdout.startswith("Ka") and started.stdout.count("\n") == 1

    scored = json.loads(run_cli_ok("score", names_run, "Bala\nKo", "--json").stdout)
    assert scored["items"] == 2 and scored["chars"] == len("Bala") + len("Ko") + 2
    assert [s["char"] for s in scored["surprisal"]] == [*"Bala", None, *"Ko", None]
    assert scored["total_bits"] == pytest.approx(sum(s["bits"] for s in scored["surprisal"]))
    assert scored["bits_per_char"] * scored["chars"] == pytest.approx(scored["total_bits"])


def test_generated_items_of_the_api_are_whole_and_seeded(names_run):
    model = CharRNN.load(names_run)
    first = model.generate(num_samples=6, seed=5, length=40)
    assert first == model.generate(num_samples=6, seed=5, length=40)
    assert all("\n" not in item and ITEM_MARK not in item and len(item) <= 40 for item in first)
    novel = model.generate_novel(5, seed=1, temperature=1.5)
    index = CopyIndex.for_run(names_run)
    assert len(novel) == 5 and not any(index.has_item(item) for item in novel)


def test_novelty_finds_the_longest_shared_span_and_training_items(names_run, names_file):
    index = CopyIndex.for_run(names_run)
    folder = RunFolder(names_run)
    saved = folder.open()
    corpus = load_corpus(str(names_file), reserved=ITEM_MARK)
    train, val = split_items(find_items(corpus.ids, corpus.vocab, "line"), 0.1, saved.train["seed"])
    training = [corpus.vocab.decode(train.item(i)) for i in range(len(train))]
    assert index.has_item(training[3]) and not index.has_item(training[3] + "x")
    held_out = [corpus.vocab.decode(val.item(i)) for i in range(len(val))]
    assert not all(index.has_item(name) for name in held_out)  # most are not also training items
    text = "\n".join(training)
    rng = random.Random(0)
    for _ in range(20):
        sample = "".join(rng.choice("abdeiklmnorstBKLMD ~") for _ in range(rng.randint(1, 25)))
        best = max(
            (sample[i:j] for i in range(len(sample)) for j in range(i + 1, len(sample) + 1)
             if "\n" not in sample[i:j] and sample[i:j] in text),
            key=len, default="",
        )  # fmt: skip
        assert len(index.longest_copy(sample)) == len(best)
        assert index.longest_copy(sample) in text


def test_fine_tuning_keeps_the_known_rows_and_adds_new_characters(names_run, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(["Müller", "Øst", "Bala", "Kosé"] * 60) + "\n", encoding="utf-8")
    out = tmp_path / "tuned"
    result = run_cli("train", "--init-from", names_run, "--data", small, "--items", "--out", out,
                     "--max-steps", "6", "--batch-size", "8", "--seq-length", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["init_from"]["run"] == str(names_run.resolve())
    assert set(saved["init_from"]["added_chars"]) == set("üØé")
    assert saved["train"]["lr"] == 1e-3 and saved["model"]["units"] == 48
    assert run_cli("train", "--resume", "--out", out, "--max-steps", "9").returncode == 0
    assert json.loads((out / "config.json").read_text())["init_from"] == saved["init_from"]

    origin = RunFolder(names_run).open()
    tuned = RunFolder(out).open()
    model = CharRNNModel(tuned.model)
    start_from(model, names_run, origin, tuned.vocab)
    before = CharRNN.load(names_run).model
    for ch in origin.vocab.chars:
        assert torch.equal(
            model.embedding.weight[tuned.vocab.index(ch)], before.embedding.weight[origin.vocab.index(ch)]
        )
        assert torch.equal(model.head.bias[tuned.vocab.index(ch)], before.head.bias[origin.vocab.index(ch)])
    assert torch.equal(model.rnn.weight_hh_l0, before.rnn.weight_hh_l0)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--init-from", "{tmp}/nothing"), "no such run folder"),
        (("--init-from", "{tmp}"), "is not a run folder"),
        (("--init-from", "{run}", "--units", "64"), "keeps its shape"),
        (("--items", "--data", "{blank}"), "has no non-blank line"),
        (("--items", "--data", "{marked}"), "U+FFFF"),
    ],
)
def test_bad_items_and_fine_tuning_input_gets_one_line(args, message, names_run, tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
    (tmp_path / "marked.txt").write_text("ab\nc\uffffd\n", encoding="utf-8")
    filled = [a.format(tmp=tmp_path, run=names_run, blank=tmp_path / "blank.txt",
                       marked=tmp_path / "marked.txt") for a in args]  # fmt: skip
    data = [] if "--data" in filled else ["--data", tmp_path / "marked.txt"]
    result = run_cli("train", *filled, *data, "--out", tmp_path / "out", "--max-steps", "2")
    assert result.returncode in (1, 2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "config.json").exists()


def test_score_and_novel_only_refuse_what_they_cannot_do(tmp_path):
    lines = tmp_path / "same.txt"
    lines.write_text("abc\n" * 300, encoding="utf-8")
    CharRNN.train(data=str(lines), items="line", out=str(tmp_path / "copy"), max_steps=60, lr=1e-2, **TINY)
    model = CharRNN.load(tmp_path / "copy")
    assert model.generate(temperature=0) == "abc"
    with pytest.raises(Exception, match="only 0 of 3 items were new"):
        model.generate_novel(3, temperature=0, max_draws=9)
    result = run_cli(
        "generate", tmp_path / "copy", "--num-samples", "2", "--novel-only", "--temperature", "0"
    )
    assert result.returncode == 1 and "mostly repeats its training items" in result.stderr
    result = run_cli("score", tmp_path / "copy", "abz")
    assert result.returncode == 1 and "'z'" in result.stderr and "Traceback" not in result.stderr


def test_scoring_one_text_counts_every_character_after_a_newline(names_run, tmp_path, small_corpus):
    CharRNN.train(data=str(small_corpus), out=str(tmp_path / "text"), max_steps=3, **TINY)
    model = CharRNN.load(tmp_path / "text")
    score = model.score("To be")
    assert score.chars == list("To be") and len(score.bits) == 5
    ids = np.concatenate([model.vocab.encode("\n"), model.vocab.encode("To be")])
    with torch.no_grad():
        logits, _ = model.model(torch.tensor(ids[:-1], dtype=torch.long)[None])
    nats = F.cross_entropy(logits[0], torch.tensor(ids[1:], dtype=torch.long), reduction="sum")
    assert score.total_bits == pytest.approx(float(nats) / math.log(2), rel=1e-5)


def test_paragraph_items_are_generated_whole_with_a_blank_line_between(tmp_path):
    poems = tmp_path / "poems.txt"
    poems.write_text(
        "\n\n".join("roses are red\nviolets are blue" for _ in range(150)) + "\n", encoding="utf-8"
    )
    CharRNN.train(
        data=str(poems), items="paragraph", out=str(tmp_path / "poems"), max_steps=80, lr=1e-2, **TINY
    )
    result = run_cli("generate", tmp_path / "poems", "--num-samples", "3", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "\n\n".join(["roses are red\nviolets are blue"] * 3) + "\n"


def test_the_server_makes_whole_items_of_an_items_run(names_run, tmp_path):
    import httpx
    from test_server import running_server

    with (
        running_server(names_run, log=tmp_path / "server.log") as (_, url),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        answer = client.post("/api/generate", json={"seed": 4, "length": 60})
        started = client.post("/api/generate", json={"seed": 4, "start": "Ka", "length": 60})
    assert answer.status_code == 200 and started.status_code == 200, answer.text
    item = answer.json()["text"]
    assert ITEM_MARK not in item and "\n" not in item and len(item) < 60
    assert started.json()["text"].startswith("Ka") and ITEM_MARK not in started.json()["text"]
