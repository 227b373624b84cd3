"""The fast generation engine against the reference: logits, draws, seeds, quality, CLI."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from char_rnn import CharRNN
from char_rnn.cli import build_parser
from char_rnn.config import ModelConfig, SampleConfig
from char_rnn.data.vocab import Vocab
from char_rnn.errors import UsageError
from char_rnn.evaluate import evaluate, evaluate_steps
from char_rnn.generate import DEFAULT_ENGINE, ENGINES, generate_texts, open_engine
from char_rnn.generate.fast import FastEngine, FastGenerator, FastLoop, row_settings
from char_rnn.generate.sampling import draw_by_inverse_cdf, filter_logits, sample_next
from char_rnn.model.network import CharRNNModel

VOCAB = Vocab("abcdefghij \n")


def random_model(cell: str = "gru", layers: int = 1, seed: int = 0) -> CharRNNModel:
    torch.manual_seed(seed)
    model = CharRNNModel(ModelConfig(vocab_size=len(VOCAB), embedding_dim=8, units=24, layers=layers,
                                     cell=cell))  # fmt: skip
    with torch.no_grad():  # sharper distributions than the initialisation's, so draws differ
        model.head.weight.mul_(8)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_text) -> CharRNN:
    folder = tmp_path_factory.mktemp("fastgen")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare_text[:30_000])
    return CharRNN.train(
        data=str(corpus), out=str(folder / "run"), cell="gru", layers=1, dropout=0.0, embedding_dim=16,
        units=64, lr=0.01, lr_schedule="constant", warmup_steps=0,
        batch_size=16, seq_length=32, max_steps=80, quiet=True, precision="fp32",
    )  # fmt: skip


def step_by_step(model: CharRNNModel, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) from the reference forward pass, one character at a time."""
    state, out = None, []
    for t in range(ids.shape[1]):
        logits, state = model(ids[:, t : t + 1], state)
        out.append(logits[:, 0])
    return torch.stack(out, 1)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_fast_step_logits_match_the_reference(cell, layers):
    model = random_model(cell, layers)
    ids = torch.randint(0, len(VOCAB), (3, 30), generator=torch.Generator().manual_seed(1))
    expected = step_by_step(model, ids)
    for weights, tolerance in (("fp32", 1e-4), ("int8", 0.05)):
        loop = FastGenerator(model, weights).loop
        h, c = torch.zeros(layers, 3, 24), torch.zeros(layers, 3, 24)
        got = torch.stack([loop.step(ids[:, t], h, c) for t in range(ids.shape[1])], 1)
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= tolerance * scale, weights


def test_greedy_fast_equals_greedy_reference():
    model = random_model("gru", 2)
    config = SampleConfig(start="a", length=150, temperature=0)
    reference = generate_texts(open_engine("reference", model, VOCAB), config)
    assert generate_texts(FastEngine(model, VOCAB, weights="fp32"), config) == reference


def test_same_seed_same_text_other_seed_other_text():
    model = random_model()
    config = SampleConfig(start="a", length=200, num_samples=2, seed=3, top_p=0.9)
    first = generate_texts(open_engine("fast", model, VOCAB), config)
    assert generate_texts(open_engine("fast", model, VOCAB), config) == first
    other = SampleConfig(start="a", length=200, num_samples=2, seed=4, top_p=0.9)
    assert generate_texts(open_engine("fast", model, VOCAB), other) != first
    assert first[0] != first[1]  # the streams are independent samples


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=3),
                                     dict(temperature=1.3, top_p=0.8)])  # fmt: skip
def test_inverse_cdf_draws_follow_the_same_distribution_as_sample_next(options):
    logits = torch.tensor([[2.0, 1.5, 0.3, 0.0, -1.0, 1.0]]).repeat(40_000, 1)
    top_k, top_p = options.get("top_k"), options.get("top_p")
    filtered = filter_logits(logits, options["temperature"], top_k, top_p)
    uniforms = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    fast_share = torch.bincount(draw_by_inverse_cdf(filtered, uniforms), minlength=6) / 40_000
    reference = sample_next(logits, **options, generator=torch.Generator().manual_seed(1))
    reference_share = torch.bincount(reference, minlength=6) / 40_000
    assert (fast_share - reference_share).abs().max() < 0.015
    assert torch.equal(fast_share == 0, torch.softmax(filtered[0], 0) == 0)  # masked: never drawn


def test_inverse_cdf_never_lands_on_a_masked_character_at_the_extremes():
    logits = torch.tensor([[float("-inf"), 0.0, 1.0, float("-inf")]]).repeat(2, 1)
    uniforms = torch.tensor([0.0, torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()])
    assert draw_by_inverse_cdf(logits, uniforms).tolist() == [1, 2]


def test_the_compiled_loop_and_the_eager_fallback_draw_the_same_text():
    model = random_model("gru", 2)
    generator = FastGenerator(model, "fp32")
    assert generator.compiled
    eager = FastLoop(generator.loop.layers, generator.loop.head)
    uniforms = torch.rand((50, 2), generator=torch.Generator().manual_seed(0))
    settings = SampleConfig(temperature=0.9)
    outs = []
    for loop in (generator.loop, eager):
        h, c = torch.zeros(2, 2, 24), torch.zeros(2, 2, 24)
        out = torch.empty(50, 2, dtype=torch.long)
        loop(torch.zeros(2, len(VOCAB)), h, c, uniforms, out, row_settings([settings] * 2, len(VOCAB)))
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


def test_streaming_yields_before_the_whole_text_is_made():
    model = random_model()
    steps = FastEngine(model, VOCAB).stream(SampleConfig(start="a", length=10**9, seed=0))
    assert len(next(steps)) == 1  # a billion characters would never finish


def test_int8_loss_is_within_half_a_percent_of_fp32(trained, shakespeare_text):
    ids = trained.vocab.encode(shakespeare_text[27_000:30_000])
    reference = evaluate(trained.model, ids).loss
    assert evaluate_steps(FastGenerator(trained.model, "fp32").step, ids).loss == pytest.approx(
        reference, rel=1e-5
    )
    int8 = evaluate_steps(FastGenerator(trained.model, "int8").step, ids).loss
    assert abs(int8 - reference) <= 0.005 * reference
    assert reference < 2.6  # a model that learned something (uniform is 4.1): the check means something


@pytest.mark.slow  # kept out of the default run for its time budget (pytest -m slow runs it)
def test_cli_engines_and_bench(trained):
    run = trained.run_config["train"]["out"]
    flags = ("--start", "ROMEO:", "--length", "80", "--seed", "2")
    fast_run = run_cli("generate", run, *flags)
    assert fast_run.returncode == 0, fast_run.stderr
    assert fast_run.stdout.startswith("ROMEO:") and len(fast_run.stdout) == len("ROMEO:") + 81
    assert run_cli("generate", run, *flags).stdout == fast_run.stdout
    reference = run_cli("generate", run, *flags, "--engine", "reference")
    assert reference.returncode == 0 and len(reference.stdout) == len(fast_run.stdout)
    renamed = run_cli("generate", run, *flags, "--engine", "torch")  # the fast engine's old CLI name
    assert renamed.returncode == 0 and renamed.stdout == fast_run.stdout
    assert renamed.stderr == "char-rnn: warning: --engine torch is now called fast\n"
    bench = run_cli("bench", "generate", "--run", run, "--batch-size", "4", "--length", "200")
    assert bench.returncode == 0, bench.stderr
    assert "4 stream(s) x 200 characters" in bench.stdout and bench.stdout.strip().endswith("chars/s")
    bad = run_cli("bench", "generate", "--batch-size", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_every_engine_flag_offers_the_registry_and_takes_the_old_name(capsys):
    parser = build_parser()
    commands = {
        "generate": ("generate", "RUN"),
        "serve": ("serve", "RUN"),
        "bench generate": ("bench", "generate"),
    }
    for command, argv in commands.items():
        subparser = parser
        for word in command.split():
            subparser = next(a for a in subparser._actions if a.dest in ("command", "bench")).choices[word]
        engine = next(a for a in subparser._actions if a.dest == "engine")
        assert list(engine.choices) == list(ENGINES), command
        assert parser.parse_args([*argv]).engine == DEFAULT_ENGINE
        assert parser.parse_args([*argv, "--engine", "torch"]).engine == "fast"
        assert capsys.readouterr().err == "char-rnn: warning: --engine torch is now called fast\n"
        with pytest.raises(UsageError, match="invalid choice"):
            parser.parse_args([*argv, "--engine", "tensorflow"])
