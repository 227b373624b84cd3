"""The fast engine: a compiled step, K characters per call from Python.

The reference engine (reference.py) calls `model.forward` once per character,
which costs about as much in Python and dispatch as in arithmetic for one stream.
Here everything per character runs inside one TorchScript loop over a chunk of K
steps, on weights prepared once:

- the first layer's input projection of each character is a precomputed row of
  E_proj = Embedding @ W_ih^T + b_ih, shape (V, G*H) with G gates, looked up by id;
- the recurrent matmuls (h @ W_hh^T, and W_ih of the layers above the first) use int8
  weights with a scale per output row (fbgemm dynamic quantization, VNNI on CPUs that
  have it) or fp32 weights; the output layer stays fp32;
- sampling is by inverse CDF from uniforms drawn ahead, per chunk, from the seeded
  generator, through the same temperature/top-k/top-p filter as `sample_next`.

Shapes: B streams, H hidden units, L layers, V vocabulary, K steps per chunk.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import SampleConfig
from ..data.vocab import Vocab
from ..errors import UsageError
from ..model.network import CharRNNModel, state_tensors
from .sampling import draw_by_inverse_cdf, filter_logits, make_generator

WEIGHTS = ("auto", "int8", "fp32")
CHUNK = 64  # steps per call: long enough to hide the call, short enough to stream smoothly


class FloatLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = weight.detach().float().clone()
        self.bias = bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())


class Int8Linear(nn.Module):
    """x @ W^T + b with W in int8, one scale per output row; x is quantized per call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
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
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)


class TableLookup(nn.Module):
    """The first layer's input projection: one precomputed row per character."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table.detach().float().contiguous()  # (V, G*H)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, ids)


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
        r, z = torch.sigmoid(gates_in[:, : 2 * units] + gates_hidden[:, : 2 * units]).chunk(2, 1)
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
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class TanhRNNLayer(nn.Module):
    def __init__(self, input_proj: nn.Module, hidden_proj: nn.Module):
        super().__init__()
        self.input_proj = input_proj
        self.hidden_proj = hidden_proj

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.input_proj(x) + self.hidden_proj(h)), c


_LAYERS = {"gru": GRULayer, "lstm": LSTMLayer, "rnn": TanhRNNLayer}


class FastLoop(nn.Module):
    """The compiled part. `h` and `c` (L, B, H) are updated in place; `c` is unused but for LSTM."""

    def __init__(self, layers: list[nn.Module], head: FloatLinear):
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
        temperature: float,
        top_k: int | None,
        top_p: float | None,
    ) -> torch.Tensor:
        """Draw K characters per stream into `out` (K, B) given the uniforms (K, B); return
        the logits for the character after them."""
        for t in range(uniforms.shape[0]):
            if temperature == 0.0:
                ids = logits.argmax(1)
            else:
                ids = draw_by_inverse_cdf(filter_logits(logits, temperature, top_k, top_p), uniforms[t])
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
    """The fast engine covers every cell and depth on the CPU; elsewhere the reference runs."""
    return model.head.weight.device.type == "cpu"


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
            head = FloatLinear(model.head.weight, model.head.bias)
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
    ) -> Iterator[torch.Tensor]:
        """From the logits (B, V) and state after the start string, yield (k, B) ids per chunk."""
        batch = logits.shape[0]
        out = torch.empty(CHUNK, batch, dtype=torch.long)  # reused: memory stays constant
        temperature = float(config.temperature)
        top_p = None if config.top_p is None else float(config.top_p)
        for done in range(0, config.length, CHUNK):
            k = min(CHUNK, config.length - done)
            uniforms = torch.rand((k, batch), generator=generator)
            logits = self.loop(logits, h, c, uniforms, out[:k], temperature, config.top_k, top_p)
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

    def __init__(self, model: CharRNNModel, vocab: Vocab, *, weights: str = "auto"):
        resolve_weights(weights)  # a bad or unavailable choice fails here, not at the first stream
        if not supports(model):
            raise UsageError("the fast engine runs on the CPU; use the reference engine on a GPU")
        self.model = model
        self.vocab = vocab
        self.weights = weights

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
        # The start string is read by the reference forward pass (one call, fp32).
        start = torch.as_tensor(self.vocab.encode(config.start), dtype=torch.long)
        logits, state = self.model(start.unsqueeze(0).expand(config.num_samples, -1), None)
        tensors = state_tensors(state)
        h = tensors[0].contiguous().clone()
        c = tensors[1].contiguous().clone() if len(tensors) == 2 else torch.zeros_like(h)
        chars = np.array(self.vocab.chars, dtype=object)
        for ids in fast.chunks(logits[:, -1].float().contiguous(), h, c, config, generator):
            yield from chars[ids.numpy()].tolist()
