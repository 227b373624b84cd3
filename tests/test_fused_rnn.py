"""The fused CPU GRU/LSTM: the same function as nn.GRU/nn.LSTM, its gradients, and the same
learning under bf16 as under fp32."""

import functools
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_train_config
from torch import nn

from char_rnn.config import ModelConfig
from char_rnn.model import fused_rnn, head, native
from char_rnn.model.network import CharRNNModel
from char_rnn.run.checkpoint import load_weights, weights_bytes
from char_rnn.run.storage import write_atomic
from char_rnn.threads import using_threads
from char_rnn.train.loop import train

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


def _state(cell, layers, batch, units, dtype=torch.float32, requires_grad=False):
    def one():
        return torch.randn(layers, batch, units, dtype=dtype, requires_grad=requires_grad)

    return (one(), one()) if cell == "lstm" else one()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradients_pass_gradcheck_in_float64(cell):
    torch.manual_seed(0)
    rnn = RNNS[cell](3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    weights = [p.detach().clone().requires_grad_(True) for p in rnn.parameters()]
    if cell == "gru":
        assert torch.autograd.gradcheck(fused_rnn.gru_layer, (x, states[0], *weights))
    else:
        assert torch.autograd.gradcheck(fused_rnn.lstm_layer, (x, *states, *weights))


def native_loops():
    module = native.kernels()
    if module is None:
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail("a C++ compiler is here, yet the fused kernels did not build")
        pytest.skip("no C++ compiler: the compiled loops cannot be built here")
    return fused_rnn.NativeLoops(module)


LOOPS = {"torch": lambda: fused_rnn.TorchLoops(), "native": native_loops}


def _outputs_and_grads(rnn, cell, x, state, forward):
    rnn.zero_grad()
    xg = x.clone().requires_grad_(True)
    out, final = forward(xg, state)
    finals = list(final) if cell == "lstm" else [final]
    (out.square().sum() + sum((f * 3).sum() for f in finals)).backward()
    return [out, *finals, xg.grad, *(p.grad for p in rnn.parameters())]


def _two_layers(cell, steps, batch):
    """A seeded 2-layer rnn (24 -> 40: widths that are not multiples of the vector length
    exercise the loops' tails), inputs (steps, batch, 24) and a state."""
    torch.manual_seed(0)
    return RNNS[cell](24, 40, num_layers=2), torch.randn(steps, batch, 24), _state(cell, 2, batch, 40)


@pytest.mark.parametrize("loops", LOOPS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_forward_and_gradients_equal_pytorch_layers_in_fp32(cell, layers, loops):
    torch.manual_seed(0)
    rnn = RNNS[cell](6, 10, num_layers=layers)
    x = torch.randn(7, 3, 6)
    state = _state(cell, layers, 3, 10)
    chosen = LOOPS[loops]()
    ours = _outputs_and_grads(rnn, cell, x, state, lambda xg, s: fused_rnn.run(rnn, xg, s, loops=chosen))
    theirs = _outputs_and_grads(rnn, cell, x, state, lambda xg, s: rnn(xg, s))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_compiled_loops_match_pytorch_loops_under_bf16(cell):
    rnn, x, state = _two_layers(cell, 30, 5)
    results = {}
    for name, make in LOOPS.items():
        chosen = make()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results[name] = _outputs_and_grads(
                rnn, cell, x, state, lambda xg, s, chosen=chosen: fused_rnn.run(rnn, xg, s, loops=chosen)
            )
    for a, b in zip(results["native"], results["torch"], strict=True):
        assert a.dtype == b.dtype
        scale = b.abs().max().clamp_min(1e-3)
        assert (a - b).abs().max() / scale < 0.02


@pytest.mark.parametrize("steps", [5, 20])  # at::mm, then oneDNN on reordered weights (>= 16)
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_wide_layers_backward_gemm_in_column_parts_matches_pytorch_loops(cell, autocast, steps):
    # From 384 units a thread, the compiled backward pass splits its recurrent GEMM's output
    # columns among the threads (cells.cpp, ColumnParts): on two threads, 790 units run as two
    # parts of 395 (not a multiple of the vector length, so the loops' tails run too).
    torch.manual_seed(0)
    rnn = RNNS[cell](8, 790)
    x, state = torch.randn(steps, 3, 8), _state(cell, 1, 3, 790)
    results = {}
    for name, make in LOOPS.items():
        chosen = make()
        with using_threads(2), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results[name] = _outputs_and_grads(
                rnn, cell, x, state, lambda xg, s, chosen=chosen: fused_rnn.run(rnn, xg, s, loops=chosen)
            )
    for a, b in zip(results["native"], results["torch"], strict=True):
        scale = b.abs().max().clamp_min(1e-3)
        assert (a - b).abs().max() / scale < (0.02 if autocast else 1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_state_carried_across_chunks_equals_the_whole_sequence_under_bf16(cell):
    torch.manual_seed(0)
    model = CharRNNModel(
        ModelConfig(vocab_size=11, embedding_dim=8, units=16, layers=2, cell=cell, dropout=0.0)
    )
    model.fused_cpu = True  # the fused kernels, whatever the default for this cell
    ids = torch.randint(0, 11, (3, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole, whole_state = model(ids)
        state, pieces = None, []
        for chunk in ids.split(6, dim=1):
            logits, state = model(chunk, state)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole)
    for a, b in zip(fused_rnn_state(state), fused_rnn_state(whole_state), strict=True):
        torch.testing.assert_close(a, b)


def fused_rnn_state(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_weights_saved_from_the_fused_model_load_into_pytorch_layers(cell, tmp_path):
    config = ModelConfig(vocab_size=13, embedding_dim=8, units=20, layers=2, cell=cell)
    torch.manual_seed(0)
    fused = CharRNNModel(config)
    path = tmp_path / "model.safetensors"
    write_atomic(path, weights_bytes(fused))
    torch.manual_seed(1)
    plain = CharRNNModel(config)
    plain.fused_cpu = False
    load_weights(plain, path)
    ids = torch.randint(0, 13, (4, 9))
    fused.eval()
    plain.eval()
    torch.testing.assert_close(fused(ids)[0], plain(ids)[0], rtol=1e-5, atol=1e-6)


def _train_steps(model, steps=4):
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    ids = torch.randint(0, model.config.vocab_size, (6, 20))
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_handing_on_the_layers_bf16_outputs_changes_no_number(cell, monkeypatch):
    # Where no dropout comes between, a layer hands the head (and an LSTM the next layer) its bf16
    # copy of its outputs instead of fp32 ones that they would cast: training must not change.
    config = ModelConfig(vocab_size=17, embedding_dim=12, units=24, layers=2, cell=cell, dropout=0.0)
    layers = {"gru": fused_rnn.gru_layer, "lstm": fused_rnn.lstm_layer}
    results = []
    for hand_on in (True, False):
        for name, layer in layers.items():  # the last argument says whether to hand them on

            def casting(*args, layer=layer):
                return layer(*args[:-1], False)

            monkeypatch.setattr(fused_rnn, f"{name}_layer", layer if hand_on else casting)
        torch.manual_seed(0)
        model = CharRNNModel(config)
        model.fused_cpu = True
        results.append(_train_steps(model))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_faster_weight_gradient_layout_gives_the_same_gradients_to_bf16s_rounding(cell):
    # Taken where a run's numbers depend on the thread count anyway (train/loop.py).
    rnn, x, state = _two_layers(cell, 30, 5)
    results = []
    for invariant in (True, False):
        forward = functools.partial(fused_rnn.run, rnn, gates_transposed=invariant)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_outputs_and_grads(rnn, cell, x, state, forward))
    for a, b in zip(*results, strict=True):
        assert (a - b).abs().max() / b.abs().max().clamp_min(1e-3) < 0.02


def test_the_cpu_head_gives_nn_linears_numbers_under_bf16():
    torch.manual_seed(0)
    linear = nn.Linear(48, 11)
    x = torch.randn(7, 5, 48)
    results = []
    for forward in (linear, lambda xg: head.logits(linear, xg, torch.bfloat16)):
        linear.zero_grad()
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(xg)
        out.float().square().sum().backward()
        results.append((out, xg.grad, linear.bias.grad, linear.weight.grad))
    (out, d_x, d_b, d_w), (out2, d_x2, d_b2, d_w2) = results
    assert out.dtype == out2.dtype == torch.bfloat16
    for a, b in ((out, out2), (d_x, d_x2), (d_b, d_b2)):
        assert torch.equal(a, b)
    # The weight's gradient runs as another GEMM layout: bf16's rounding apart, the same.
    torch.testing.assert_close(d_w2, d_w, rtol=0.02, atol=1e-3 * d_w.abs().max().item())


@pytest.fixture
def one_thread():
    # Numerics do not depend on the thread count here; one thread keeps the test's time
    # steady on a machine that other jobs share.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bf16_learns_as_well_as_fp32(small_corpus, tmp_path, one_thread):
    # Same seed and data order; the fused path under bf16 must reach fp32's validation loss.
    model = ModelConfig(embedding_dim=32, units=128, layers=1, cell="gru", dropout=0.0)
    losses = {}
    for precision in ("fp32", "bf16"):
        config = tiny_train_config(
            small_corpus, tmp_path / precision, precision=precision, batch_size=16, seq_length=48,
            max_steps=100, epochs=100, val_fraction=0.05,
        )  # fmt: skip
        losses[precision] = train(model, config).val.loss
    assert losses["fp32"] < 2.6  # it learned something: uniform over the vocabulary is ~4.1
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 0.01


def test_cli_bench_train_prints_speed_and_peak_fraction():
    result = run_cli(
        "bench", "train", "--cell", "lstm", "--layers", "2", "--units", "32", "--embedding-dim", "8",
        "--batch-size", "4", "--seq-length", "8", "--steps", "1", "--precision", "fp32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2xLSTM 32" in result.stdout and "fused rnn" in result.stdout
    assert "chars/s" in result.stdout and "GEMM peak" in result.stdout
    bad = run_cli("bench", "train", "--steps", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.skipif(native.kernels() is None, reason="the compiled loops could not be built here")
@pytest.mark.parametrize("rows", [1, 15, 16, 17, 33, 100])
@pytest.mark.parametrize("cols", [1, 16, 31, 48, 130])
def test_the_compiled_transpose_equals_pytorchs(rows, cols):
    # Blocks of 16 x 16 in strips of 32 rows; every size around them exercises the tails.
    matrix = torch.randn(rows, cols).to(torch.bfloat16)
    assert torch.equal(native.kernels().transpose16(matrix), matrix.t().contiguous())
    # and widened to fp32 on the way, as the weight gradients are
    assert torch.equal(native.kernels().transpose16(matrix, widen=True), matrix.t().float())


@pytest.mark.skipif(native.kernels() is None, reason="the compiled loops could not be built here")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_compiled_loops_give_the_same_numbers_on_any_thread_count(cell):
    # The gate loops split a step's rows among the threads and sum the bias gradients in fixed
    # blocks, so a resumed run that gets another thread count still repeats the numbers.
    rnn, x, state = _two_layers(cell, 20, 37)
    results = []
    for threads in (1, 2, 3):
        with using_threads(threads), torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_outputs_and_grads(rnn, cell, x, state, lambda xg, s: fused_rnn.run(rnn, xg, s)))
    for outputs in results[1:]:
        for a, b in zip(results[0], outputs, strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(native.kernels() is None, reason="the compiled loops could not be built here")
@pytest.mark.parametrize("gates_transposed", [False, True])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_wide_layers_give_the_same_numbers_on_one_and_two_threads(cell, gates_transposed):
    # Wide enough for the backward pass's recurrent GEMM to run in column parts (790 units:
    # two of 395) and long enough for oneDNN's reordered weights (17 steps): those parts and the
    # faster weight-gradient layout's are GEMMs planned for one thread, where oneDNN left to
    # itself splits their sums on two threads and not on one.
    # A batch of 64: with a few rows oneDNN splits nothing, and there would be nothing to test.
    torch.manual_seed(0)
    rnn = RNNS[cell](8, 790)
    x, state = torch.randn(17, 64, 8), _state(cell, 1, 64, 790)
    forward = functools.partial(fused_rnn.run, rnn, gates_transposed=gates_transposed)
    results = []
    for threads in (1, 2):
        with using_threads(threads), torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_outputs_and_grads(rnn, cell, x, state, forward))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(native.kernels() is None, reason="the compiled loops could not be built here")
def test_a_process_killed_while_holding_the_builders_lock_does_not_stop_later_loads():
    # PyTorch's builder holds a lock file during every load; a process killed in those few
    # milliseconds left it behind, and every later run waited for it forever.
    lock = Path(native.kernels().__file__).parent / native.BUILDER_LOCK
    hold = (
        "import sys, time; from torch.utils.file_baton import FileBaton; "
        "assert FileBaton(sys.argv[1]).try_acquire(); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert lock.exists()
        load = "from char_rnn.model import native; print(native.kernels() is not None)"
        done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "True", done.stderr
    finally:
        holder.kill()
        lock.unlink(missing_ok=True)
