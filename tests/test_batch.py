"""Streams batched together: each one's text depends only on its own settings; stop strings."""

from __future__ import annotations

import pytest
import torch

from char_rnn.config import ModelConfig, SampleConfig
from char_rnn.data.vocab import Vocab
from char_rnn.errors import CharRNNError, UsageError
from char_rnn.generate import generate_texts, open_engine, stream_texts
from char_rnn.generate.batch import ROUND_STEPS, EngineBatch, FastBatch
from char_rnn.generate.stops import StopMatcher
from char_rnn.model.network import CharRNNModel

VOCAB = Vocab("abcdefghij \n")


def random_model(cell: str = "gru", layers: int = 1, units: int = 24) -> CharRNNModel:
    torch.manual_seed(0)
    model = CharRNNModel(ModelConfig(vocab_size=len(VOCAB), embedding_dim=8, units=units, layers=layers,
                                     cell=cell))  # fmt: skip
    with torch.no_grad():  # sharper distributions than the initialisation's, so draws differ
        model.head.weight.mul_(8)
    return model.eval()


def run_batch(batch, joining: list[tuple[int, SampleConfig]]) -> list[tuple[str, str | None]]:
    """Each config joins at its round, those of one round together; every stream runs to its
    end. -> (text, stop) each."""
    texts: dict[int, str] = {}
    streams: dict[int, object] = {}
    pending = sorted(enumerate(joining), key=lambda item: item[1][0])
    round_ = 0
    while pending or len(batch):
        arriving = []
        while pending and pending[0][1][0] <= round_:
            arriving.append(pending.pop(0))
        # Those that arrive together join together: their start strings are read at once.
        joined = batch.join([config for _, (_, config) in arriving])
        for (index, (_, config)), stream in zip(arriving, joined, strict=True):
            streams[index] = stream
            texts[index] = config.start
        for stream, text in batch.advance():
            index = next(i for i, s in streams.items() if s is stream)
            texts[index] += text
            if stream.finished:
                batch.remove(stream)
        round_ += 1
    return [(texts[i], streams[i].stopped) for i in range(len(joining))]


def crowd(count: int) -> list[SampleConfig]:
    return [
        SampleConfig(
            start="abc"[: i % 3 + 1],
            length=40 + 13 * i,
            temperature=(0.0, 0.6, 1.0, 1.4)[i % 4],
            top_k=(None, 4)[i % 2],
            top_p=(None, 0.7, 0.95)[i % 3],
            stop=(("ja",), ())[i % 2],
            seed=100 + i,
        )  # fmt: skip
        for i in range(count)
    ]


@pytest.mark.parametrize("cell, layers, units", [("gru", 1, 48), ("lstm", 2, 50), ("rnn", 1, 24)])
def test_the_same_seed_gives_the_same_text_alone_and_beside_63_others(cell, layers, units):
    model = random_model(cell, layers, units)
    engine = open_engine("fast", model, VOCAB)
    target = SampleConfig(start="ab", length=300, temperature=0.9, top_k=6, top_p=0.9, seed=7, stop=("jjj",))
    alone = run_batch(FastBatch(model, VOCAB), [(0, target)])[0]
    others = crowd(63)
    # The others join before, with and after it, at different rounds.
    joined = [(i % 5, c) for i, c in enumerate(others[:40])] + [(2, target)]
    joined += [(3 + i % 4, c) for i, c in enumerate(others[40:])]
    beside = run_batch(FastBatch(model, VOCAB), joined)
    assert beside[40] == alone
    # ... and the text the library gives for that one sample, stopped the same way.
    assert generate_texts(engine, target) == [alone[0]]
    # Each of the others is also its own text alone.
    for i in (0, 5, 17, 62):
        assert run_batch(FastBatch(model, VOCAB), [(0, others[i])])[0] == beside[i if i < 40 else i + 1]
    assert len({text for text, _ in beside}) > 50  # the streams really differ


def test_other_engines_batch_in_turn_with_the_same_meaning():
    model = random_model()
    engine = open_engine("reference", model, VOCAB)
    configs = crowd(6)
    in_turn = run_batch(EngineBatch(engine), [(i, c) for i, c in enumerate(configs)])
    assert [text for text, _ in in_turn] == [generate_texts(engine, c)[0] for c in configs]


def test_a_stream_that_leaves_frees_its_row_and_the_others_go_on():
    model = random_model()
    batch = FastBatch(model, VOCAB)
    configs = crowd(3)
    streams = [batch.add(c) for c in configs]
    texts = ["", "", ""]
    for stream, text in batch.advance():
        texts[streams.index(stream)] += text
    batch.remove(streams[0])  # its client went away
    assert len(batch) == 2
    while len(batch):
        for stream, text in batch.advance():
            texts[streams.index(stream)] += text
            if stream.finished:
                batch.remove(stream)
    for i in (1, 2):
        assert configs[i].start + texts[i] == run_batch(FastBatch(model, VOCAB), [(0, configs[i])])[0][0]
    assert len(texts[0]) <= ROUND_STEPS


# ---- stop strings ----------------------------------------------------------------------


def test_the_matcher_holds_back_what_may_grow_into_a_stop_and_cuts_before_it():
    matcher = StopMatcher(("\n\n", "END"))
    assert matcher.feed("abc\n") == "abc"  # "\n" may be the start of "\n\n"
    assert matcher.feed("x") == "\nx"
    assert matcher.feed("yE") == "y"
    assert matcher.feed("N") == ""
    assert matcher.feed("Dmore") == "" and matcher.stopped == "END"
    assert matcher.feed("late") == ""
    ends = StopMatcher(("abc", "b"))  # the first one completed ends it
    assert ends.feed("ab") == "a" and ends.stopped == "b"
    unfinished = StopMatcher(("xyz",))
    assert unfinished.feed("axy") == "a" and unfinished.flush() == "xy" and unfinished.stopped is None


def test_generation_stops_before_the_stop_string_for_every_sample():
    model = random_model()
    engine = open_engine("fast", model, VOCAB)
    free = generate_texts(engine, SampleConfig(start="a", length=400, num_samples=3, seed=5))
    stop = free[0][5:7]  # a pair of characters the first sample writes
    stopped = generate_texts(engine, SampleConfig(start="a", length=400, num_samples=3, seed=5, stop=(stop,)))
    for whole, cut in zip(free, stopped, strict=True):
        at = whole.find(stop, 1)
        assert cut == (whole[:at] if at >= 0 else whole)
    one = SampleConfig(start="a", length=400, seed=5, stop=(stop,))
    steps = list(stream_texts(engine, one))
    assert "a" + "".join(piece for (piece,) in steps) == generate_texts(engine, one)[0]
    assert stop not in generate_texts(engine, one)[0][1:]


def test_bad_stop_strings_are_refused_in_one_line():
    with pytest.raises(UsageError, match="stop strings must be non-empty"):
        SampleConfig(stop=("",))
    assert SampleConfig(stop="\n").stop == ("\n",)
    engine = open_engine("fast", random_model(), VOCAB)
    with pytest.raises(CharRNNError, match="stop string 'Ω'.*not in this model's vocabulary"):
        generate_texts(engine, SampleConfig(start="a", length=10, stop=("Ω",)))
