"""The Python API, end to end: train from Python, load, generate, evaluate."""

import pytest

from char_rnn import CharRNN, CharRNNError


@pytest.fixture(scope="module")
def model(tmp_path_factory, shakespeare_text):
    folder = tmp_path_factory.mktemp("api")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare_text[:30_000])
    return CharRNN.train(
        data=str(corpus), out=str(folder / "run"), embedding_dim=16, units=48,
        batch_size=8, seq_length=32, max_steps=60, quiet=True, precision="fp32",
    )  # fmt: skip


def test_generate_returns_the_start_and_the_new_text(model):
    text = model.generate("ROMEO:", length=200, seed=3)
    assert text.startswith("ROMEO:") and len(text) == 206
    assert model.generate("ROMEO:", length=200, seed=3) == text


def test_num_samples_gives_a_list(model):
    texts = model.generate("A", length=20, num_samples=4, seed=0)
    assert len(texts) == 4 and all(len(t) == 21 for t in texts)


def test_load_from_the_run_folder(model):
    run = model.run_config["train"]["out"]
    again = CharRNN.load(run)
    assert again.generate("ROMEO", length=50, temperature=0) == model.generate(
        "ROMEO", length=50, temperature=0
    )
    best = CharRNN.load(run, which="best")
    assert best.config == model.config


def test_evaluate_text(model, shakespeare_text):
    result = model.evaluate(shakespeare_text[25_000:30_000])
    assert result.chars == 4999 and 1.0 < result.loss < 4.2


def test_evaluate_file_reads_the_split_training_made(model, shakespeare_text):
    val = model.evaluate_file()  # the run's own corpus, its last tenth
    assert val.what.startswith("val text of ") and val.chars == 2_999
    assert val.loss == pytest.approx(model.evaluate(shakespeare_text[27_000:30_000]).loss, rel=1e-5)
    corpus = model.run_config["corpus"]["source"]
    whole = model.evaluate_file(corpus, window=256)
    assert whole.split == "all" and whole.chars == 29_999
    assert set(whole.as_dict()) == {"loss", "bpc", "perplexity", "chars", "window_256_loss"}
    assert model.evaluate_file(corpus, split="train").chars == 26_999
    with pytest.raises(ValueError, match="split must be one of all, train, val"):
        model.evaluate_file(split="test")


def test_evaluate_file_on_a_text_with_fewer_characters(model, tmp_path, shakespeare_text):
    """Another text's ids are the model's, translated slice by slice from its memory map."""
    text = "".join(c for c in shakespeare_text[:5_000] if c not in "aeiou")
    path = tmp_path / "no_vowels.txt"
    path.write_text(text)
    result = model.evaluate_file(path)
    assert result.chars == len(text) - 1
    assert result.loss == pytest.approx(model.evaluate(text).loss, rel=1e-5)
    path.write_text(text + "Ω")
    with pytest.raises(CharRNNError, match=r"1 character\(s\) not in this model's vocabulary.*'Ω'"):
        model.evaluate_file(path)


def test_unknown_characters_raise(model):
    with pytest.raises(CharRNNError, match="vocabulary"):
        model.generate("Ω")


def test_bad_parameters_raise(model):
    with pytest.raises(ValueError, match="top_p"):
        model.generate("A", top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("A", temperature=-1)
