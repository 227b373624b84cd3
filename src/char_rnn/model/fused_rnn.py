"""GRU and LSTM layers for CPU training, with the time loop cut down to what must be sequential.

On CPU, nn.GRU runs several unfused operations per time step, and under bf16 autocast it
casts its weights at every step. These layers do what cuDNN does on a GPU:

    forward   the input projection of all T steps in one GEMM (T*B x E @ E x G*H), then
              per step only h @ W_hh^T (B x H @ H x G*H) and the gate arithmetic;
    backward  per step only dgates @ W_hh (B x G*H @ G*H x H) and the gate arithmetic,
              then the weight gradients of all steps at once: dW_hh = dG^T @ H_prev,
              dW_ih = dG^T @ X, dX = dG @ W_ih, biases by sums: a few large GEMMs that run
              near the machine's peak.

G is the number of gates (3 for a GRU, 4 for an LSTM). The weights are cast to the GEMM
dtype (bf16 under autocast) once per call, not per step; the gate arithmetic runs in the
input's dtype (fp32) and the gradients come back in the parameters' dtype.

The time loops themselves come in two forms with one interface: `NativeLoops`, compiled
(native/cells.cpp), which spends one vectorized pass over (B, H) per step on the gate
arithmetic, and `TorchLoops`, the same in PyTorch operations, where no compiler is at hand. Parameters are
those of nn.GRU / nn.LSTM (weight_ih_l0, ...), read from the module, so checkpoints do not
depend on which path ran.

The math is PyTorch's (and Keras's reset_after=True) GRU:
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
and PyTorch's LSTM (gate order i, f, g, o): c' = f * c + i * g, h' = o * tanh(c').

Shapes are time-major inside: x (T, B, E), outputs (T, B, H).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from . import native
from .dropout import dropout

_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


@contextlib.contextmanager
def _threads_restored() -> Iterator[int]:
    """The intra-op thread count, put back however the block ends.

    Inside the time loops the gate arithmetic runs on one thread: its (B, H) operations are
    too small to pay for waking a second one, and on a busy machine each parallel region can
    wait a whole scheduler slice for it (measured: 20x slower). The GEMMs keep every thread."""
    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def gemm_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype in effect on `device`, or None when autocast is off."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class TorchLoops:
    """The time loops in PyTorch operations: the fallback where the compiled ones cannot be
    built, and the reference they are tested against. Each loop takes the input projections
    without biases, in the GEMM dtype, and returns what the batched weight-gradient GEMMs and
    the backward loop need."""

    @staticmethod
    def transposed(matrix: torch.Tensor) -> torch.Tensor:
        """`matrix.t()` for the weight gradients' GEMMs, as a view."""
        return matrix.t()

    @staticmethod
    def weight_gradient(d_gates: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """D^T @ inputs, (G, T*B) @ (T*B, K), for D the gates' gradients given as blocks of
        columns, for layers whose gate gradients are not transposed: here the same GEMMs as
        with `transposed`."""
        products = [torch.mm(d.t(), inputs) for d in d_gates]
        return products[0] if len(products) == 1 else torch.cat(products)

    @staticmethod
    def gru_forward(gi, h0, w_hh_c, b_ih, b_hh):
        T, B, _ = gi.shape
        H = h0.shape[1]
        acc, compute_dtype = h0.dtype, w_hh_c.dtype
        # Both biases of r and z folded in: (T, B, 3H).
        gi = gi.to(acc) + b_ih.to(acc)
        gi[..., : 2 * H] += b_hh[: 2 * H].to(acc)
        b_hn = b_hh[2 * H :].to(acc)
        # Preallocated per-step buffers: each step writes in place (out=) instead of allocating.
        hs = h0.new_empty(T + 1, B, H)  # hs[t] is the state before step t
        hs[0] = h0
        hs_c = hs if compute_dtype == acc else hs.new_empty(T + 1, B, H, dtype=compute_dtype)
        if hs_c is not hs:
            hs_c[0] = h0
        rz = hs.new_empty(T, B, 2 * H)
        n = hs.new_empty(T, B, H)
        ghn = hs.new_empty(T, B, H)  # W_hn h + b_hn, which the reset gate multiplies
        w_hh_t = w_hh_c.t()
        with _threads_restored() as threads:
            for t in range(T):
                gh = torch.mm(hs_c[t], w_hh_t)  # (B, 3H), the only sequential GEMM
                torch.set_num_threads(1)
                torch.add(gi[t, :, : 2 * H], gh[:, : 2 * H], out=rz[t]).sigmoid_()
                torch.add(gh[:, 2 * H :], b_hn, out=ghn[t])
                torch.addcmul(gi[t, :, 2 * H :], rz[t, :, :H], ghn[t], out=n[t]).tanh_()
                # h' = n + z * (h - n) = (1 - z) * n + z * h
                torch.lerp(n[t], hs[t], rz[t, :, H:], out=hs[t + 1])
                if hs_c is not hs:
                    hs_c[t + 1].copy_(hs[t + 1])
                torch.set_num_threads(threads)
        return hs, hs_c, rz, ghn, n

    @staticmethod
    def gru_backward(d_out, hs, rz, ghn, n, w_hh_c):
        T, B, H = n.shape
        cd = w_hh_c.dtype
        d_out = d_out.to(hs.dtype)
        dh = torch.zeros_like(hs[0])
        # dG holds the gradients of the recurrent pre-activations [r, z, n_h] per step; the
        # input side differs only in n (dn_x = dn, dn_h = dn * r), kept in dgi_n.
        dg = hs.new_empty(B, 3 * H)
        dg_c = hs.new_empty(T, B, 3 * H, dtype=cd)
        dgi_n = hs.new_empty(T, B, H, dtype=cd)
        dhz = hs.new_empty(B, H)
        scratch = hs.new_empty(B, H)
        with _threads_restored() as threads:
            for t in range(T - 1, -1, -1):
                torch.set_num_threads(1)
                dh += d_out[t]
                r, z = rz[t, :, :H], rz[t, :, H:]
                torch.sub(hs[t], n[t], out=scratch).mul_(dh)
                _sigmoid_backward(scratch, z, grad_input=dg[:, H : 2 * H])
                torch.mul(dh, z, out=dhz)
                torch.sub(dh, dhz, out=scratch)  # dh * (1 - z)
                dn = _tanh_backward(scratch, n[t])
                torch.mul(dn, ghn[t], out=scratch)
                _sigmoid_backward(scratch, r, grad_input=dg[:, :H])
                torch.mul(dn, r, out=dg[:, 2 * H :])
                dg_c[t].copy_(dg)
                dgi_n[t].copy_(dn)
                torch.set_num_threads(threads)
                dh = dhz + torch.mm(dg_c[t], w_hh_c)
        d_b_hh = dg_c.view(T * B, 3 * H).sum(0, dtype=hs.dtype)
        d_b_in = dgi_n.view(T * B, H).sum(0, dtype=hs.dtype)
        return dg_c, dgi_n, dh, d_b_hh, d_b_in

    @staticmethod
    def lstm_forward(pre, h0, c0, w_hh_c, bias):
        T, B, _ = pre.shape
        H = h0.shape[1]
        acc, compute_dtype = h0.dtype, w_hh_c.dtype
        # gates[t] starts as the input projection with both biases; each step adds W_hh h
        # and turns it, in place, into the activated gates i, f, g, o.
        gates = pre.to(acc) + bias
        hs = h0.new_empty(T + 1, B, H)
        hs[0] = h0
        hs_c = hs if compute_dtype == acc else hs.new_empty(T + 1, B, H, dtype=compute_dtype)
        if hs_c is not hs:
            hs_c[0] = h0
        cs = hs.new_empty(T + 1, B, H)
        cs[0] = c0
        tanh_c = hs.new_empty(T, B, H)
        w_hh_t = w_hh_c.t()
        with _threads_restored() as threads:
            for t in range(T):
                g = gates[t]
                gh = torch.mm(hs_c[t], w_hh_t)
                torch.set_num_threads(1)
                g += gh
                g[:, : 2 * H].sigmoid_()
                g[:, 2 * H : 3 * H].tanh_()
                g[:, 3 * H :].sigmoid_()
                i, f, gg, o = g.chunk(4, dim=1)
                torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, gg)
                torch.tanh(cs[t + 1], out=tanh_c[t])
                torch.mul(o, tanh_c[t], out=hs[t + 1])
                if hs_c is not hs:
                    hs_c[t + 1].copy_(hs[t + 1])
                torch.set_num_threads(threads)
        return hs, hs_c, cs, gates, tanh_c

    @staticmethod
    def lstm_backward(d_out, d_c_last, cs, gates, tanh_c, w_hh_c):
        T, B, H = tanh_c.shape
        cd = w_hh_c.dtype
        d_out = d_out.to(cs.dtype)
        dh = torch.zeros_like(cs[0])
        dc = d_c_last.clone()
        dg = cs.new_empty(B, 4 * H)
        dg_c = cs.new_empty(T, B, 4 * H, dtype=cd)
        scratch = cs.new_empty(B, H)
        with _threads_restored() as threads:
            for t in range(T - 1, -1, -1):
                torch.set_num_threads(1)
                dh += d_out[t]
                i, f, g, o = gates[t].chunk(4, dim=1)
                di, df, dgg, do = dg.chunk(4, dim=1)
                # h = o * tanh(c): do, and dc += dh * o * (1 - tanh(c)^2)
                torch.mul(dh, tanh_c[t], out=scratch)
                _sigmoid_backward(scratch, o, grad_input=do)
                torch.mul(dh, o, out=scratch)
                dc += _tanh_backward(scratch, tanh_c[t])
                # c = f * c_prev + i * g
                torch.mul(dc, g, out=scratch)
                _sigmoid_backward(scratch, i, grad_input=di)
                torch.mul(dc, i, out=scratch)
                _tanh_backward(scratch, g, grad_input=dgg)
                torch.mul(dc, cs[t], out=scratch)
                _sigmoid_backward(scratch, f, grad_input=df)
                dc.mul_(f)
                dg_c[t].copy_(dg)
                torch.set_num_threads(threads)
                dh = torch.mm(dg_c[t], w_hh_c).to(cs.dtype)
        return dg_c, dh, dc, dg_c.view(T * B, 4 * H).sum(0, dtype=cs.dtype)


class NativeLoops:
    """The same loops, compiled (native/cells.cpp): one pass over the gate arithmetic per step.
    They take fp32 state and fp32 or bf16 GEMMs."""

    def __init__(self, module):
        self.module = module

    def transposed(self, matrix: torch.Tensor) -> torch.Tensor:
        """`matrix.t()` stored row by row where it is bf16: oneDNN's GEMMs read it about twice
        as fast so, and the compiled copy costs a fraction of what it saves (cells.cpp)."""
        if matrix.dtype == torch.bfloat16:
            return self.module.transpose16(matrix)
        return matrix.t()

    def weight_gradient(self, d_gates: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """D^T @ inputs as TorchLoops's, for layers whose gate gradients are not transposed. In
        bf16, as (inputs^T @ D)^T, transposing the inputs (T*B, K) and the result (K, G) instead
        of the gradients (T*B, G), in fp32: the tutorial's step measured 1.4 % faster. Its GEMMs
        run in fixed column parts (cells.cpp, weight_gradient), so the numbers are the same on
        one and two threads; on more, one part per thread makes them depend on the count."""
        if d_gates[0].dtype != torch.bfloat16:
            return TorchLoops.weight_gradient(d_gates, inputs)
        return self.module.weight_gradient(self.module.transpose16(inputs.contiguous()), list(d_gates))

    def gru_forward(self, gi, h0, w_hh_c, b_ih, b_hh):
        return self.module.gru_forward(gi, h0.contiguous(), w_hh_c.t(), b_ih.float(), b_hh.float())

    def gru_backward(self, d_out, hs, rz, ghn, n, w_hh_c):
        return self.module.gru_backward(d_out.contiguous(), hs, rz, ghn, n, w_hh_c)

    def lstm_forward(self, pre, h0, c0, w_hh_c, bias):
        return self.module.lstm_forward(pre, h0.contiguous(), c0.contiguous(), w_hh_c.t(), bias.contiguous())

    def lstm_backward(self, d_out, d_c_last, cs, gates, tanh_c, w_hh_c):
        return self.module.lstm_backward(d_out.contiguous(), d_c_last, cs, gates, tanh_c, w_hh_c)


def loops_for(acc: torch.dtype, compute_dtype: torch.dtype) -> TorchLoops | NativeLoops:
    """The compiled loops where they apply and could be built, else PyTorch's."""
    if acc == torch.float32 and compute_dtype in (torch.float32, torch.bfloat16):
        module = native.kernels()
        if module is not None:
            return NativeLoops(module)
    return TorchLoops()


def _outputs_gradient(d_out, d_last, outputs):
    """The gradient of a layer's outputs (T, B, H) from those of what it returned: the outputs
    (fp32, or the GEMM dtype's copy, which the loops read as it is) and the last state (fp32).
    Either is None where nothing used it."""
    if d_last is None:
        return outputs.new_zeros(outputs.shape) if d_out is None else d_out.contiguous()
    d_out = outputs.new_zeros(outputs.shape) if d_out is None else d_out.to(outputs.dtype, copy=True)
    d_out[-1] += d_last
    return d_out


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x, h0, w_ih, w_hh, b_ih, b_hh, compute_dtype, loops, out_in_gemm_dtype, gates_transposed
    ):
        T, B, E = x.shape
        H = h0.shape[1]
        w_ih_c, w_hh_c = w_ih.to(compute_dtype), w_hh.to(compute_dtype)
        x_c = x.to(compute_dtype).reshape(T * B, E)
        gi = torch.mm(x_c, w_ih_c.t()).view(T, B, 3 * H)  # all T input projections at once
        acc = torch.promote_types(x.dtype, torch.float32)  # x may be the layer below's GEMM-dtype outputs
        hs, hs_c, rz, ghn, n = loops.gru_forward(gi, h0.to(acc), w_hh_c, b_ih, b_hh)
        ctx.save_for_backward(x_c, w_ih_c, w_hh_c)
        ctx.buffers = (hs, hs_c, rz, ghn, n)
        ctx.loops = loops
        ctx.dtypes = (x.dtype, h0.dtype, w_ih.dtype, w_hh.dtype, b_ih.dtype, b_hh.dtype)
        ctx.gates_transposed = gates_transposed
        ctx.set_materialize_grads(False)
        return (hs_c if out_in_gemm_dtype else hs)[1:], hs[T].clone()

    @staticmethod
    def backward(ctx, d_out, d_last):
        x_c, w_ih_c, w_hh_c = ctx.saved_tensors
        hs, hs_c, rz, ghn, n = ctx.buffers
        x_dtype, h0_dtype, w_ih_dtype, w_hh_dtype, b_ih_dtype, b_hh_dtype = ctx.dtypes
        T, B, H = n.shape
        d_out = _outputs_gradient(d_out, d_last, hs[1:])
        dg_c, dgi_n, dh0, d_b_rzn, d_b_in = ctx.loops.gru_backward(d_out, hs, rz, ghn, n, w_hh_c)

        # The weight gradients of all steps at once.
        dg_all = dg_c.view(T * B, 3 * H)
        dgi_rz = dg_all[:, : 2 * H]
        dgi_n_all = dgi_n.view(T * B, H)
        d_x = d_w_ih = d_w_hh = None
        if ctx.needs_input_grad[0]:
            d_x = torch.mm(dgi_rz, w_ih_c[: 2 * H]).to(x_dtype)
            d_x += torch.mm(dgi_n_all, w_ih_c[2 * H :]).to(x_dtype)
            d_x = d_x.view(T, B, -1)
        h_prev = hs_c[:T].reshape(T * B, H)
        if not ctx.gates_transposed:
            weight_gradient = ctx.loops.weight_gradient
            if ctx.needs_input_grad[2]:
                d_w_ih = weight_gradient((dgi_rz, dgi_n_all), x_c).to(w_ih_dtype)
            if ctx.needs_input_grad[3]:
                d_w_hh = weight_gradient((dg_all,), h_prev).to(w_hh_dtype)
        elif any(ctx.needs_input_grad[2:4]):
            dg_t = ctx.loops.transposed(dg_all)  # (3H, T*B)
            if ctx.needs_input_grad[2]:
                d_w_ih = torch.cat((torch.mm(dg_t[: 2 * H], x_c), torch.mm(dgi_n_all.t(), x_c))).to(
                    w_ih_dtype
                )
            if ctx.needs_input_grad[3]:
                d_w_hh = torch.mm(dg_t, h_prev).to(w_hh_dtype)
        d_b_ih = torch.cat((d_b_rzn[: 2 * H], d_b_in)).to(b_ih_dtype)
        return d_x, dh0.to(h0_dtype), d_w_ih, d_w_hh, d_b_ih, d_b_rzn.to(b_hh_dtype), None, None, None, None


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, compute_dtype, loops, out_in_gemm_dtype, gates_transposed
    ):
        T, B, E = x.shape
        H = h0.shape[1]
        acc = torch.promote_types(x.dtype, torch.float32)  # as in _GRULayer
        w_ih_c, w_hh_c = w_ih.to(compute_dtype), w_hh.to(compute_dtype)
        x_c = x.to(compute_dtype).reshape(T * B, E)
        pre = torch.mm(x_c, w_ih_c.t()).view(T, B, 4 * H)
        bias = (b_ih + b_hh).to(acc)
        hs, hs_c, cs, gates, tanh_c = loops.lstm_forward(pre, h0.to(acc), c0.to(acc), w_hh_c, bias)
        ctx.save_for_backward(x_c, w_ih_c, w_hh_c)
        ctx.buffers = (hs_c, cs, gates, tanh_c)
        ctx.loops = loops
        ctx.dtypes = (x.dtype, h0.dtype, c0.dtype, w_ih.dtype, w_hh.dtype, b_ih.dtype, b_hh.dtype)
        ctx.gates_transposed = gates_transposed
        ctx.set_materialize_grads(False)
        return (hs_c if out_in_gemm_dtype else hs)[1:], hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, d_out, d_last, d_c_last):
        x_c, w_ih_c, w_hh_c = ctx.saved_tensors
        hs_c, cs, gates, tanh_c = ctx.buffers
        x_dtype, h0_dtype, c0_dtype, w_ih_dtype, w_hh_dtype, b_ih_dtype, b_hh_dtype = ctx.dtypes
        T, B, H = tanh_c.shape
        d_out = _outputs_gradient(d_out, d_last, cs[1:])
        d_c_last = torch.zeros_like(cs[0]) if d_c_last is None else d_c_last.to(cs.dtype)
        dg_c, dh0, dc0, d_b = ctx.loops.lstm_backward(d_out, d_c_last, cs, gates, tanh_c, w_hh_c)
        dg_all = dg_c.view(T * B, 4 * H)
        d_x = d_w_ih = d_w_hh = None
        if ctx.needs_input_grad[0]:
            d_x = torch.mm(dg_all, w_ih_c).to(x_dtype).view(T, B, -1)
        h_prev = hs_c[:T].reshape(T * B, H)
        if not ctx.gates_transposed:
            if ctx.needs_input_grad[3]:
                d_w_ih = ctx.loops.weight_gradient((dg_all,), x_c).to(w_ih_dtype)
            if ctx.needs_input_grad[4]:
                d_w_hh = ctx.loops.weight_gradient((dg_all,), h_prev).to(w_hh_dtype)
        elif any(ctx.needs_input_grad[3:5]):
            dg_t = ctx.loops.transposed(dg_all)  # (4H, T*B)
            if ctx.needs_input_grad[3]:
                d_w_ih = torch.mm(dg_t, x_c).to(w_ih_dtype)
            if ctx.needs_input_grad[4]:
                d_w_hh = torch.mm(dg_t, h_prev).to(w_hh_dtype)
        return (
            d_x,
            dh0.to(h0_dtype),
            dc0.to(c0_dtype),
            d_w_ih,
            d_w_hh,
            d_b.to(b_ih_dtype),
            d_b.to(b_hh_dtype),
            None,
            None,
            None,
            None,
        )


def _gemm_dtype_and_loops(x, w_hh, compute_dtype, loops):
    """A layer's defaults: the GEMMs in the weights' dtype, and `loops_for` the dtypes (x may
    be the layer below's outputs in the GEMM dtype; the state is fp32 or wider)."""
    compute_dtype = compute_dtype or w_hh.dtype
    return compute_dtype, loops or loops_for(torch.promote_types(x.dtype, torch.float32), compute_dtype)


def gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, compute_dtype: torch.dtype | None = None, loops=None,
              out_in_gemm_dtype=False, gates_transposed=True) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """One GRU layer over x (T, B, E) from h0 (B, H): the outputs (T, B, H) and the final state
    (B, H, fp32). The GEMMs run in `compute_dtype` (default: the weights' dtype); `loops`
    chooses the time loops (default: `loops_for` the dtypes). With `out_in_gemm_dtype` the
    outputs come in the GEMM dtype, for a consumer that would cast them to it: the layer keeps
    that copy anyway, so the cast and its gradient's are saved. `gates_transposed` chooses the
    weight gradients' layout: dG^T @ X with the gate gradients dG transposed (whose numbers
    depend on no thread count), or off, the faster (X^T @ dG)^T (NativeLoops.weight_gradient)."""
    compute_dtype, loops = _gemm_dtype_and_loops(x, w_hh, compute_dtype, loops)
    return _GRULayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh, compute_dtype, loops, out_in_gemm_dtype,
                           gates_transposed)  # fmt: skip


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, compute_dtype: torch.dtype | None = None, loops=None,
               out_in_gemm_dtype=False, gates_transposed=True) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """One LSTM layer over x (T, B, E) from (h0, c0): the outputs (T, B, H) and the final
    states h and c (B, H, fp32); the arguments as for `gru_layer`."""
    compute_dtype, loops = _gemm_dtype_and_loops(x, w_hh, compute_dtype, loops)
    return _LSTMLayer.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, compute_dtype, loops, out_in_gemm_dtype,
                            gates_transposed)  # fmt: skip


def supports(rnn: nn.Module) -> bool:
    """Whether `rnn` is a layer these kernels compute: a unidirectional GRU or LSTM with biases
    and no projection."""
    if not isinstance(rnn, (nn.GRU, nn.LSTM)):
        return False
    return rnn.bias and not rnn.bidirectional and getattr(rnn, "proj_size", 0) == 0


def run(rnn: nn.GRU | nn.LSTM, x: torch.Tensor, state=None, loops=None, weights=None, shared_dropout_dim=None,
        out_in_gemm_dtype=False, gates_transposed=True):  # fmt: skip
    """Run `rnn` (an nn.GRU or nn.LSTM) over time-major x (T, B, E) with its own parameters,
    or with `weights` in their place (a dict by parameter name, as torch.func.functional_call
    takes them).

    Returns the top layer's outputs (T, B, H) and the state in nn.GRU/nn.LSTM's layout:
    (L, B, H), or a pair of them for an LSTM. Dropout between layers follows
    `rnn.dropout` in training mode, as nn.GRU/nn.LSTM apply it, or with one mask for all
    positions along `shared_dropout_dim` (variational dropout). `loops` chooses the time
    loops (default: `loops_for` the dtypes). With `out_in_gemm_dtype` the outputs come in the
    GEMM dtype (bf16 under autocast), for a consumer that casts them to it; an LSTM layer
    hands the next its outputs so wherever no dropout comes between them. The numbers are the
    same either way; the state stays fp32. `gates_transposed` chooses the weight gradients'
    layout (`gru_layer`)."""
    weights = weights or {}
    is_lstm = isinstance(rnn, nn.LSTM)
    T, B, _ = x.shape
    L, H = rnn.num_layers, rnn.hidden_size
    if state is None:
        zeros = x.new_zeros(L, B, H, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype)
        state = (zeros, zeros) if is_lstm else zeros
    compute_dtype = gemm_dtype(x.device) or rnn.weight_hh_l0.dtype
    acc = torch.promote_types(x.dtype, torch.float32)
    dropped_between = rnn.dropout > 0 and rnn.training
    # An LSTM layer's input gradient is one GEMM, whose bf16 result the layer below would
    # widen to fp32 exactly; a GRU's sums two, in fp32, which bf16 outputs would round.
    hand_on_between = is_lstm and not dropped_between
    # The layers choose their own dtypes; autocast must not recast inside them.
    with torch.autocast(x.device.type, enabled=False):
        h_last, c_last = [], []
        layer_in = x.to(acc)
        for layer in range(L):
            names = [f"{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            params = [weights.get(name, getattr(rnn, name)) for name in names]
            top = layer == L - 1
            in_gemm_dtype = out_in_gemm_dtype if top else hand_on_between
            if is_lstm:
                h0, c0 = state[0][layer].to(acc), state[1][layer].to(acc)
                out, h, c = lstm_layer(layer_in, h0, c0, *params, compute_dtype, loops, in_gemm_dtype,
                                       gates_transposed)  # fmt: skip
                c_last.append(c)
            else:
                h0 = state[layer].to(acc)
                out, h = gru_layer(
                    layer_in, h0, *params, compute_dtype, loops, in_gemm_dtype, gates_transposed
                )
            h_last.append(h)
            if not top and dropped_between:
                out = dropout(out, rnn.dropout, shared_dim=shared_dropout_dim)
            layer_in = out
    h = torch.stack(h_last)
    return layer_in, ((h, torch.stack(c_last)) if is_lstm else h)
