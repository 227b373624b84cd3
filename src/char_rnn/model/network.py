"""The network: Embedding -> RNN (GRU, LSTM or tanh RNN) -> Linear.

Shape letters used throughout the package:
    B batch, T time steps, V vocabulary size, E embedding size, H hidden units, L layers.

The state is what the RNN carries between calls: a tensor (L, B, H) for GRU and RNN,
a pair of them (h, c) for LSTM. `forward(ids, state)` takes ids (B, T) and returns
logits (B, T, V) with the new state, so text can be fed whole or in chunks with the
same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import ModelConfig
from ..threads import first_thread_invariant
from . import fused_rnn, head
from .dropout import dropout

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_RNN_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class CharRNNModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the corpus before building")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        # Dropout on every connection that is not recurrent: the embedding's output, between
        # layers (inside the RNN) and the top layer's output. The state carried from batch to
        # batch is never masked; `weight_drop` masks the recurrent weights instead. With
        # variational_dropout each sequence keeps its masks for all its time steps.
        # nn.GRU/LSTM/RNN dispatch to cuDNN on CUDA.
        self.rnn = _RNN_CLASSES[config.cell](
            config.embedding_dim,
            config.units,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.units, config.vocab_size)
        # On CPU a GRU or LSTM runs through fused_rnn's kernels with these same parameters
        # (measured faster than nn.GRU/nn.LSTM: README, Training speed); False keeps
        # PyTorch's own layers, for comparisons. cuDNN stays in charge on CUDA.
        self.fused_cpu = fused_rnn.supports(self.rnn)
        # The fused layers' weight-gradient layout (fused_rnn.gru_layer): True, dG^T @ X, whose
        # numbers depend on no thread count; False, the faster (X^T @ dG)^T. Training chooses
        # (choose_gradient_layout).
        self.gates_transposed = True

    def choose_gradient_layout(self, step_figures: Callable[[], Sequence[torch.Tensor]],
                               counts: Sequence[int]) -> bool:  # fmt: skip
        """Set the weight-gradient layout for training: the faster (gates not transposed) where a
        step's numbers (`step_figures()` with this model) come out the same on the fewest and
        the most of `counts` threads with it, else the other where they do with that one, else
        the faster. Returns whether the numbers depend on no thread count."""

        def figures_with(transposed: bool) -> Sequence[torch.Tensor]:
            self.gates_transposed = transposed
            return step_figures()

        layout = first_thread_invariant((False, True), figures_with, counts)
        self.gates_transposed = bool(layout)
        return layout is not None

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        c = self.config
        device = device or self.head.weight.device
        zeros = torch.zeros(c.layers, batch_size, c.units, device=device)
        return (zeros, zeros.clone()) if c.cell == "lstm" else zeros

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        recurrent = self._dropped_recurrent_weights()
        if self.fused_cpu and ids.device.type == "cpu" and ids.shape[1] > 1:
            # Time-major inside: each step then reads and writes contiguous (B, H) rows.
            # (One character at a time, as generation feeds it, nn.GRU/LSTM is as fast.)
            x = self._drop(self.embedding(ids.t()), time_dim=0)  # (T, B, E)
            shared = 0 if self.config.variational_dropout else None
            # Where no dropout comes before the head, it reads the layers' own GEMM-dtype copy
            # of the outputs instead of casting them (the same numbers, a cast saved each way).
            head_reads_copy = not (self.training and self.config.dropout > 0)
            out, state = fused_rnn.run(self.rnn, x, state, weights=recurrent, shared_dropout_dim=shared,
                                       out_in_gemm_dtype=head_reads_copy,
                                       gates_transposed=self.gates_transposed)  # fmt: skip
            top = self._drop(out, time_dim=0)
            logits = head.logits(self.head, top, fused_rnn.gemm_dtype(top.device))
            return logits.transpose(0, 1).contiguous(), state  # (B, T, V)
        x = self._drop(self.embedding(ids), time_dim=1)  # (B, T, E)
        if self.training and self.config.variational_dropout and self.config.layers > 1:
            out, state = self._layer_by_layer(x, state, recurrent)  # (B, T, H)
        elif recurrent:
            out, state = functional_call(self.rnn, recurrent, (x, state))  # (B, T, H)
        else:
            out, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self._drop(out, time_dim=1)), state  # (B, T, V)

    def _drop(self, x: torch.Tensor, time_dim: int) -> torch.Tensor:
        """Dropout on a connection that is not recurrent, the same for all time steps of a
        sequence with variational_dropout."""
        shared = time_dim if self.config.variational_dropout else None
        return dropout(x, self.config.dropout, self.training, shared_dim=shared)

    def _layer_by_layer(
        self, x: torch.Tensor, state: State | None, weights: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, State]:
        """PyTorch's recurrent layers (batch-first), one at a time, so that the dropout between
        them can keep one mask per sequence (nn.GRU/LSTM draw a new one per character)."""
        c, rnn = self.config, self.rnn
        state = state if state is not None else self.initial_state(x.shape[0], x.device)
        layer_call = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn": torch._VF.rnn_tanh}[c.cell]
        finals = []
        for layer in range(c.layers):
            names = [f"{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            params = [weights.get(name, getattr(rnn, name)) for name in names]
            hx = tuple(s[layer : layer + 1] for s in state) if c.cell == "lstm" else state[layer : layer + 1]
            x, *final = layer_call(x, hx, params, True, 1, 0.0, True, False, True)
            finals.append(final)
            if layer < c.layers - 1:
                x = self._drop(x, time_dim=1)
        if c.cell == "lstm":
            return x, (torch.cat([h for h, _ in finals]), torch.cat([cell for _, cell in finals]))
        return x, torch.cat([h for (h,) in finals])

    def _dropped_recurrent_weights(self) -> dict[str, torch.Tensor]:
        """In training with weight_drop, each layer's hidden-to-hidden weights with a fresh
        mask (DropConnect); otherwise nothing to replace."""
        p = self.config.weight_drop
        if not (self.training and p > 0):
            return {}
        names = (f"weight_hh_l{layer}" for layer in range(self.config.layers))
        return {name: F.dropout(getattr(self.rnn, name), p) for name in names}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph at a batch boundary: the state's value carries on, its gradient does not."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_tensors(state: State) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(tensors: list[torch.Tensor]) -> State:
    return tuple(tensors) if len(tensors) == 2 else tensors[0]
