"""The short causal depthwise convolution of layers/conv.py with its SiLU, fused in C
(conv.c): y_t = act(bias + sum_{k<K} weight[:, k] * x_{t-K+1+k}), the K - 1 inputs before
x taken from the conv state.

x: (batch, T, C); weight: (C, K); bias: (C,) or None; state: (batch, K - 1, C), all one
float dtype (float32 or float64) on the CPU (`ops.backend.use_native`). Returns y (batch,
T, C), contiguous, differentiable in x, weight, bias and state; the new state is the
caller's (the last K - 1 rows of [state; x]). Threads split the batch rows; each row
writes its own slice of the weight and bias gradients, summed after.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native


def _kernels(lib, dtype):
    P, L, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return (native.kernel(lib, "conv_fwd", dtype, [P] * 5 + [L] * 3 + [i32] + [L] * 2),
            native.kernel(lib, "conv_bwd", dtype, [P] * 9 + [L] * 3 + [i32] + [L] * 2))


class _NativeConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, weight, bias, state, silu):
        x, state = x.contiguous(), state.contiguous()
        w = weight.t().contiguous()  # (K, C)
        bias = None if bias is None else bias.contiguous()
        batch, T, C = x.shape
        fwd, _ = _kernels(lib, x.dtype)
        y = torch.empty_like(x)
        native.run(fwd, [(native.ptr(x), native.ptr(w), native.ptr(bias), native.ptr(state), native.ptr(y), T, C, w.shape[0],
                          int(silu), *p) for p in native.rows(batch)])
        ctx.save_for_backward(x, w, bias, state)
        ctx.lib, ctx.silu = lib, silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, bias, state = ctx.saved_tensors
        batch, T, C = x.shape
        K = w.shape[0]
        _, bwd = _kernels(ctx.lib, x.dtype)
        dy = dy.contiguous()
        dx, dstate = torch.empty_like(x), torch.empty_like(state)
        dw, db = x.new_empty(batch, K, C), x.new_empty(batch, C)
        native.run(bwd, [(native.ptr(x), native.ptr(w), native.ptr(bias), native.ptr(state), native.ptr(dy), native.ptr(dx),
                          native.ptr(dstate), native.ptr(dw), native.ptr(db), T, C, K, int(ctx.silu), *p)
                         for p in native.rows(batch)])
        return (None, dx, dw.sum(0).t(), None if bias is None else db.sum(0), dstate, None)


def short_conv(lib, x, weight, bias, state, silu):
    """(y, new state): `lib` = native.load("conv"); weight, bias, state in x's dtype."""
    K = weight.shape[1]
    y = _NativeConv.apply(lib, x, weight, bias, state, silu)
    xp = torch.cat([state, x], dim=1) if x.shape[1] < K - 1 else x
    return y, xp[:, xp.shape[1] - (K - 1):]


def load():
    return native.load("conv")
