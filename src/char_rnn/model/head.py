"""The output layer's GEMMs on the fused CPU path under bf16.

nn.Linear's backward computes the weight's gradient as dlogits^T @ h with dlogits^T a
transposed view, and oneDNN reads that view at well under half its speed for a vocabulary's
few dozen rows (measured for the tutorial's 65 x 6400 @ 6400 x 1024: 2.2 ms against 0.9 with
dlogits^T stored row by row, which takes 0.02 ms to make). The forward pass and the other
gradients are nn.Linear's under autocast, number for number.
"""

from __future__ import annotations

import torch
from torch import nn


class _Logits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        x_c, w_c = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x_c, w_c)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        return torch.addmm(bias.to(dtype), x_c, w_c.t())

    @staticmethod
    def backward(ctx, d_logits):
        x_c, w_c = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        d_x = torch.mm(d_logits, w_c).to(x_dtype) if ctx.needs_input_grad[0] else None
        d_w = torch.mm(d_logits.t().contiguous(), x_c).to(w_dtype) if ctx.needs_input_grad[1] else None
        d_b = d_logits.sum(0).to(b_dtype) if ctx.needs_input_grad[2] else None
        return d_x, d_w, d_b, None


def logits(head: nn.Linear, x: torch.Tensor, gemm_dtype: torch.dtype | None) -> torch.Tensor:
    """`head(x)` for x (..., H): with the GEMMs in `gemm_dtype` (bf16, as autocast runs them) on
    CPU through the layer above, elsewhere as nn.Linear computes it."""
    if gemm_dtype != torch.bfloat16 or x.device.type != "cpu":
        return head(x)
    with torch.autocast("cpu", enabled=False):
        flat = _Logits.apply(x.reshape(-1, x.shape[-1]), head.weight, head.bias, gemm_dtype)
    return flat.view(*x.shape[:-1], -1)
