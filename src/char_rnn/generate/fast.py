"""The fast engine: a compiled step, K characters per call from Python.

The reference engine (reference.py) calls `model.forward` once per character,
which costs about as much in Python and dispatch as in arithmetic for one stream.
Here everything per character runs inside one TorchScript loop over a chunk of K
steps, on weights prepared once:

- the first layer's input projection of each character is a precomputed row of
  E_proj = Embedding @ W_ih^T + b_ih, shape (V, G*H) with G gates, looked up by id;
- the recurrent matmuls (h @ W_hh^T, and W_ih of the layers above the first) use int8
  weights with a scale per output row (fbgemm dynamic quantization, VNNI on CPUs that
  have it) or fp32 weights; the output layer keeps fp32 weights;
- sampling is by inverse CDF from uniforms drawn ahead, per chunk, from the seeded
  generator, through the same temperature/top-k/top-p filter as `sample_next`, with each
  stream's own settings.

Each row of a batch is computed as it would be alone, to the bit, so streams batched
together (generate/batch.py) give the text each gives by itself: the int8 input range is
pinned (see Int8Linear), the output layer accumulates in float64 (float32 GEMMs round a row
differently with the number of rows; the float64 result rounds back to the same float32),
and the sigmoid is written with exp (PyTorch's vectorized and scalar sigmoids differ in the
last bit, and which one a row gets depends on where the row falls in the batch).

Shapes: B streams, H hidden units, L layers, V vocabulary, K steps per chunk.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..errors import UsageError
from ..model.network import CharRNNModel
from ..threads import ThreadChoice, thread_choice
from .sampling import draw_by_inverse_cdf, filter_logits_rows, make_generator

WEIGHTS = ("auto", "int8", "fp32")
CHUNK = 64  # steps per call: long enough to hide the call, short enough to stream smoothly


class FloatLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = weight.detach().float().clone()
        self.bias = bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())


class WideLinear(nn.Module):
    """x @ W^T + b accumulated in float64 and rounded to float32: the same result for a row
    whatever rows are beside it (a float32 GEMM's rounding depends on their number)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = weight.detach().double().clone()
        self.bias = bias.detach().double().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.double(), self.weight.t()).float()


class Int8Linear(nn.Module):
    """x @ W^T + b with W in int8, one scale per output row; x is quantized per call.

    Its inputs are recurrent states, which lie in [-1, 1] for every cell (tanh, or a
    mixture of tanh outputs). fbgemm quantizes x with one range for the whole batch, from
    its minimum and maximum; an extra row holding -1 and 1 pins that range, so each row is
    quantized, and its integer product computed, exactly as it would be alone."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        self.anchor = torch.zeros(1, weight.shape[1])
        self.anchor[0, 0] = -1.0
        self.anchor[0, -1] = 1.0
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # The quantized-tensor constructors warn that they are deprecated; the kernels
            # are what we use, and `int8_available()` falls back to fp32 where they are gone.
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(quantized, bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range=True keeps the activation's products clear of 16-bit saturation on
        # CPUs without VNNI.
        rows = torch.cat([x, self.anchor], 0)
        return torch.ops.quantized.linear_dynamic(rows, self.packed, True)[:-1]


class TableLookup(nn.Module):
    """The first layer's input projection: one precomputed row per character."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table.detach().float().contiguous()  # (V, G*H)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, ids)


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^-x), the same to the bit in PyTorch's vectorized and scalar loops."""
    return torch.reciprocal(torch.exp(-x).add_(1.0))


class GRULayer(nn.Module):
    def __init__(self, input_proj: nn.Module, hidden_proj: nn.Module):
        super().__init__()
        self.input_proj = input_proj
        self.hidden_proj = hidden_proj

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        units = h.shape[1]
        gates_in = self.input_proj(x)  # (B, 3H): r, z, n
        gates_hidden = self.hidden_proj(h)
        # r and z in one add and one sigmoid over (B, 2H): fewer ops per character.
        r, z = _sigmoid(gates_in[:, : 2 * units] + gates_hidden[:, : 2 * units]).chunk(2, 1)
        n = torch.tanh(torch.addcmul(gates_in[:, 2 * units :], r, gates_hidden[:, 2 * units :]))
        return torch.lerp(n, h, z), c  # (1 - z) * n + z * h


class LSTMLayer(nn.Module):
    def __init__(self, input_proj: nn.Module, hidden_proj: nn.Module):
        super().__init__()
        self.input_proj = input_proj
        self.hidden_proj = hidden_proj

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.input_proj(x) + self.hidden_proj(h)
        i, f, g, o = gates.chunk(4, 1)
        c = _sigmoid(f) * c + _sigmoid(i) * torch.tanh(g)
        return _sigmoid(o) * torch.tanh(c), c


class TanhRNNLayer(nn.Module):
    def __init__(self, input_proj: nn.Module, hidden_proj: nn.Module):
        super().__init__()
        self.input_proj = input_proj
        self.hidden_proj = hidden_proj

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.input_proj(x) + self.hidden_proj(h)), c


_LAYERS = {"gru": GRULayer, "lstm": LSTMLayer, "rnn": TanhRNNLayer}


class RowSettings(NamedTuple):
    """Each stream's sampling settings, one row per stream (see `row_settings`)."""

    temperature: torch.Tensor  # (B, 1); 1 where greedy, so that the filter can divide by it
    greedy: torch.Tensor  # (B,) bool: temperature 0, the likeliest character
    top_k: torch.Tensor  # (B, 1) int64; V: every character
    top_p: torch.Tensor  # (B, 1); 1: the whole mass
    any_greedy: bool
    all_greedy: bool
    use_top_k: bool
    use_top_p: bool


def row_settings(configs: list[SampleConfig], vocab_size: int) -> RowSettings:
    temperatures = [float(c.temperature) for c in configs]
    top_k = [vocab_size if c.top_k is None else min(c.top_k, vocab_size) for c in configs]
    top_p = [1.0 if c.top_p is None else float(c.top_p) for c in configs]
    greedy = [t == 0.0 for t in temperatures]
    return RowSettings(
        torch.tensor([[t or 1.0] for t in temperatures]),
        torch.tensor(greedy, dtype=torch.bool),
        torch.tensor([[k] for k in top_k], dtype=torch.long),
        torch.tensor([[p] for p in top_p]),
        any(greedy),
        all(greedy),
        any(k < vocab_size for k in top_k),
        any(p < 1.0 for p in top_p),
    )


class FastLoop(nn.Module):
    """The compiled part. `h` and `c` (L, B, H) are updated in place; `c` is unused but for LSTM."""

    def __init__(self, layers: list[nn.Module], head: WideLinear):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = head

    def step(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = ids
        for i, layer in enumerate(self.layers):
            h_new, c_new = layer(x, h[i], c[i])
            h[i].copy_(h_new)
            c[i].copy_(c_new)
            x = h_new
        return self.head(x)  # (B, V)

    def forward(
        self,
        logits: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        uniforms: torch.Tensor,
        out: torch.Tensor,
        rows: RowSettings,
    ) -> torch.Tensor:
        """Draw K characters per stream into `out` (K, B) given the uniforms (K, B) and each
        stream's settings; return the logits for the character after them."""
        for t in range(uniforms.shape[0]):
            if rows.all_greedy:
                ids = logits.argmax(1)
            else:
                filtered = filter_logits_rows(
                    logits, rows.temperature, rows.top_k, rows.top_p, rows.use_top_k, rows.use_top_p
                )
                ids = draw_by_inverse_cdf(filtered, uniforms[t])
                if rows.any_greedy:
                    ids = torch.where(rows.greedy, logits.argmax(1), ids)
            out[t] = ids
            logits = self.step(ids, h, c)
        return logits


def compile_loop(loop: FastLoop) -> tuple[nn.Module, bool]:
    """The loop compiled by TorchScript, or as it is (the same arithmetic, with Python per
    step) where this PyTorch cannot script it."""
    try:
        with warnings.catch_warnings():
            # PyTorch 2.13 marks TorchScript deprecated; it is still the one way here to run
            # a loop of small ops without Python between them, and we fall back without it.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(loop), True
    except Exception:  # any failure to script leaves the eager loop, which computes the same
        return loop, False


def int8_available() -> bool:
    """True where this build of PyTorch has the dynamic int8 linear kernels."""
    try:
        Int8Linear(torch.ones(2, 2), torch.zeros(2))(torch.ones(1, 2))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def resolve_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise UsageError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "auto":
        return "int8" if int8_available() else "fp32"
    if weights == "int8" and not int8_available():
        raise UsageError("int8 weights need PyTorch's quantized CPU kernels, absent here; use fp32")
    return weights


def supports(model: CharRNNModel) -> bool:
    """The fast engine covers every cell and depth of one model on the CPU; elsewhere (and for
    an ensemble) the reference runs."""
    return isinstance(model, CharRNNModel) and model.head.weight.device.type == "cpu"


class FastGenerator:
    """A model prepared for fast generation: weights packed once, the loop compiled once."""

    def __init__(self, model: CharRNNModel, weights: str = "auto"):
        if not supports(model):
            raise UsageError("the fast engine runs on the CPU; use the reference engine on a GPU")
        self.config = model.config
        self.weights = resolve_weights(weights)
        linear = Int8Linear if self.weights == "int8" else FloatLinear
        rnn, cell = model.rnn, model.config.cell
        layers = []
        with torch.no_grad():
            for layer in range(model.config.layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
                if layer == 0:
                    input_proj: nn.Module = TableLookup(F.linear(model.embedding.weight, w_ih, b_ih))
                else:
                    input_proj = linear(w_ih, b_ih)
                layers.append(_LAYERS[cell](input_proj, linear(w_hh, b_hh)))
            head = WideLinear(model.head.weight, model.head.bias)
        self.loop, self.compiled = compile_loop(FastLoop(layers, head))

    def zero_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.config.layers, batch_size, self.config.units)
        return torch.zeros(shape), torch.zeros(shape)

    @torch.no_grad()
    def chunks(
        self,
        logits: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        config: SampleConfig,
        generator: torch.Generator,
        threads: ThreadChoice | None = None,
    ) -> Iterator[torch.Tensor]:
        """From the logits (B, V) and state after the start string, yield (k, B) ids per chunk,
        each chunk computed with the thread count `threads` chooses (threads.py)."""
        threads = threads or thread_choice()
        batch = logits.shape[0]
        out = torch.empty(CHUNK, batch, dtype=torch.long)  # reused: memory stays constant
        rows = row_settings([config] * batch, logits.shape[1])
        for done in range(0, config.length, CHUNK):
            k = min(CHUNK, config.length - done)
            uniforms = torch.rand((k, batch), generator=generator)
            # Cut where the choice asks for a small piece; the loop carries its state in h, c
            # and the logits, so the pieces make the same text as the chunk in one call.
            first = 0
            while first < k:
                last = min(k, first + max(1, round(CHUNK * threads.share())))
                with threads.unit((last - first) / CHUNK):
                    logits = self.loop(logits, h, c, uniforms[first:last], out[first:last], rows)
                first = last
            yield out[:k]

    @torch.no_grad()
    def step(
        self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """ids (B, T) read one position at a time from `state` (None: zeros) -> logits (B, V)
        after the last, and the state (h, c): the packed weights' own step, for scoring them
        (`evaluate.evaluate_steps`) against the model's."""
        h, c = state if state is not None else self.zero_state(ids.shape[0])
        for t in range(ids.shape[1]):
            logits = self.loop.step(ids[:, t].contiguous(), h, c)
        return logits, (h, c)


def read_start(
    fast: FastGenerator, vocab: Vocab, starts: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start strings of one length, read from zero state by the packed weights a step at a
    time -> the logits (B, V) for the first character after them and the state h, c
    (L, B, H). Each row comes out as it would alone, so a stream's text does not depend on
    what it was read beside (generate/batch.py); and reading a step costs about the same
    for one row as for many, the weights' memory traffic being most of it."""
    ids = torch.as_tensor(np.array([vocab.encode(start) for start in starts]), dtype=torch.long)
    logits, (h, c) = fast.step(ids, None)
    return logits.float().contiguous(), h, c


# A compiled generator per model, rebuilt when any parameter changes in place (an optimizer
# step, load_state_dict): tensor version counters tell.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_generator(model: CharRNNModel, weights: str = "auto") -> FastGenerator:
    versions = tuple(p._version for p in model.parameters())
    cached = _compiled.get(model)
    if cached is not None and cached[0] == (weights, versions):
        return cached[1]
    generator = FastGenerator(model, weights)
    _compiled[model] = ((weights, versions), generator)
    return generator


class FastEngine:
    """Generation through `FastGenerator`, for a model on the CPU (see `supports`)."""

    name = "fast"

    def __init__(
        self, model: CharRNNModel, vocab: Vocab, *, weights: str = "auto", threads: int | None = None
    ):
        resolve_weights(weights)  # a bad or unavailable choice fails here, not at the first stream
        if not supports(model):
            raise UsageError("the fast engine runs on the CPU; use the reference engine on a GPU")
        self.model = model
        self.vocab = vocab
        self.weights = weights
        # Kept across streams, so that what one stream measured serves the next; a stream of
        # another width (or a chunk cut short) takes a moment to measure again.
        self.threads = thread_choice(threads, warmup=2)
        self._width = 0

    def stream(self, config: SampleConfig) -> Iterator[list[str]]:
        self.vocab.check(config.start, "the start string")
        return self._stream(config)

    @torch.no_grad()
    def _stream(self, config: SampleConfig) -> Iterator[list[str]]:
        if config.length == 0:
            return
        weights = self.weights
        if weights == "auto" and config.temperature == 0:
            # Greedy decoding has one right answer per step; int8 rounding could flip a near-tie
            # between the two likeliest characters, so greedy text is made with fp32 weights.
            weights = "fp32"
        # Fetched per call, not kept: the weights are packed again after they change in place.
        fast = fast_generator(self.model, weights)
        self.model.eval()
        generator = make_generator(config.seed)
        logits, h, c = read_start(fast, self.vocab, [config.start] * config.num_samples)
        chars = np.array(self.vocab.chars, dtype=object)
        if config.num_samples != self._width:  # the unit of work changed: measure it anew
            self.threads = thread_choice(self.threads.pinned, warmup=2)
            self._width = config.num_samples
        for ids in fast.chunks(logits, h, c, config, generator, self.threads):
            yield from chars[ids.numpy()].tolist()
