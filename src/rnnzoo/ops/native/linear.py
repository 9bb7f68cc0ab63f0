"""x W^T + b on the CPU through oneDNN's matrix product (torch.ops.mkldnn._linear_pointwise,
the library nn.LSTM's CPU kernel runs on), forward and backward; F.linear elsewhere.

    linear(x, weight, bias=None)   as F.linear: x (..., in), weight (out, in), bias (out,)
    proj(module, x)                an nn.Linear's product: linear(x, module.weight, module.bias)

Why: on this project's CPUs torch's F.linear goes to MKL's sgemm, which takes its AVX2 code
on AMD processors (~90 GFLOP/s on one Zen 5 core), while oneDNN runs AVX-512 (~200 for
the products x W^T and dy W of a (8192, 128) x (128, 644) projection, ~110 for the weight
gradient dy^T x). Same float32 arithmetic, no lower precision (differences are rounding
order). Taken when ops.backend.use_native holds (CPU, eager, not forced to torch), the
tensors are float32 and torch has the op; float64, other devices, torch.compile and
backend.force("torch") (FLOP counting) keep F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.ops import backend


def _op():
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LP = _op()


def _mm(a, b):
    """a (M, k) @ b (N, k)^T -> (M, N) through oneDNN."""
    return _LP(a, b, None, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        y = _mm(x2, weight)
        if bias is not None:
            y += bias
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.shape = bias is not None, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        dx = _mm(g2, weight.t()).view(ctx.shape) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:  # the faster order of the two (measured: the wider side outer)
            wide = weight.shape[0] > weight.shape[1]
            dw = _mm(x2.t(), g2.t()).t() if wide else _mm(g2.t(), x2.t())
        db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias), through oneDNN on the CPU in float32 (module docstring)."""
    if (_LP is not None and x.dtype == torch.float32 and x.shape[-1] > 0 and x.numel()
            and backend.use_native(x, weight, bias)):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def proj(module, x):
    """module(x) for an nn.Linear module, through `linear`."""
    return linear(x, module.weight, module.bias)
