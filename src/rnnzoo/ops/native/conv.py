"""The short causal depthwise convolution of layers/conv.py with its SiLU, fused in C
(conv.c): y_t = act(bias + sum_{k<K} weight[:, k] * x_{t-K+1+k}), the K - 1 inputs before
x taken from the conv state.

x: (batch, T, C); weight: (C, K); bias: (C,) or None; state: (batch, K - 1, C), all one
float dtype (float32 or float64) on the CPU (`ops.backend.use_native`). Returns y (batch,
T, C), contiguous, differentiable in x, weight, bias and state; the new state is the
caller's (the last K - 1 rows of [state; x]). Threads split the batch rows; each row
writes its own slice of the weight and bias gradients, summed after. With `splits` (three
channel widths), y comes back as those three pieces, each contiguous (batch, T, width): the
delta layers' q, k and v, which their C recurrences then read without a copy, and whose
gradients come back to the conv without a cat.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from rnnzoo.ops import first_order, native


def _kernels(lib, dtype):
    P, L, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return (native.kernel(lib, "conv_fwd", dtype, [P] * 5 + [L] * 3 + [i32] + [L] * 2),
            native.kernel(lib, "conv_bwd", dtype, [P] * 9 + [L] * 3 + [i32] + [L] * 2),
            native.kernel(lib, "conv_l2_fwd", dtype, [P] * 6 + [L] * 3 + [i32, L, L, i32, L, L]),
            native.kernel(lib, "conv_l2_bwd", dtype, [P] * 10 + [L] * 3 + [i32] + [L] * 4),
            native.kernel(lib, "conv_l2_fwd3", dtype,
                          [P] * 8 + [L] * 3 + [i32, L, L, i32] + [L] * 4),
            native.kernel(lib, "conv_l2_bwd3", dtype, [P] * 12 + [L] * 3 + [i32] + [L] * 6))


def _torch_conv(x, weight, bias, state, silu, nn, G, sqrt_eps, splits):
    """short_conv's y in PyTorch: the form _NativeConv's `twice` differentiates."""
    K, T = weight.shape[1], x.shape[1]
    xp = torch.cat([state, x], 1)
    s = sum(weight[:, k] * xp[:, k:k + T] for k in range(K))
    s = s if bias is None else s + bias
    y = F.silu(s) if silu else s
    if nn:
        h = y[..., :nn * G].unflatten(-1, (nn, G))
        # 1 / max(|h|, 1e-6) as rsqrt(max(|h|^2, 1e-12)): the same value, and a second
        # derivative that is finite at h = 0 (a zero row: vector_norm's there is NaN)
        n2 = h.square().sum(-1, keepdim=True)
        r = torch.rsqrt(n2 + 1e-6) if sqrt_eps else torch.rsqrt(n2.clamp_min(1e-12))
        y = torch.cat([(h * r).flatten(-2), y[..., nn * G:]], -1)
    return y if splits is None else tuple(y.split(splits, -1))


class _NativeConv(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, weight, bias, state, silu, nn, G, sqrt_eps, splits):
        orig = (x, weight, bias, state)  # for `twice` (the copies below have no history)
        x, state = x.contiguous(), state.contiguous()
        w = weight.t().contiguous()  # (K, C)
        bias = None if bias is None else bias.contiguous()
        batch, T, C = x.shape
        K, P = w.shape[0], native.ptr
        fwd, _, l2_fwd, _, fwd3, _ = _kernels(lib, x.dtype)
        r = x.new_empty(batch, T, nn) if nn else None
        ctx.save_for_backward(x, w, bias, state, r, *orig)
        ctx.lib, ctx.silu, ctx.nn, ctx.G, ctx.splits = lib, silu, nn, G, splits
        ctx.sqrt_eps = sqrt_eps
        if splits is not None:
            ys = [x.new_empty(batch, T, n) for n in splits]
            native.run(fwd3, [(P(x), P(w), P(bias), P(state), *map(P, ys), P(r), T, C, K,
                               int(silu), nn, G, int(sqrt_eps), *splits[:2], *p)
                              for p in native.rows(batch)])
            return tuple(ys)
        y = torch.empty_like(x)
        if nn:
            native.run(l2_fwd, [(P(x), P(w), P(bias), P(state), P(y), P(r), T, C, K, int(silu), nn,
                                 G, int(sqrt_eps), *p) for p in native.rows(batch)])
        else:
            native.run(fwd, [(P(x), P(w), P(bias), P(state), P(y), T, C, K, int(silu), *p)
                             for p in native.rows(batch)])
        return y

    @staticmethod
    def twice(ctx, *dys):
        return (None, *first_order.replay(
            _torch_conv, (*ctx.saved_tensors[5:], ctx.silu, ctx.nn, ctx.G, ctx.sqrt_eps,
                          ctx.splits), dys, ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, *dys):
        x, w, bias, state, r = ctx.saved_tensors[:5]
        batch, T, C = x.shape
        K, P = w.shape[0], native.ptr
        _, bwd, _, l2_bwd, _, bwd3 = _kernels(ctx.lib, x.dtype)
        dys = [x.new_zeros(batch, T, n) if d is None else d.contiguous()
               for d, n in zip(dys, ctx.splits or (C,))]
        dx, dstate = torch.empty_like(x), torch.empty_like(state)
        dw, db = x.new_empty(batch, K, C), x.new_empty(batch, C)
        if ctx.splits is not None:
            native.run(bwd3, [(P(x), P(w), P(bias), P(state), *map(P, dys), P(r), P(dx),
                               P(dstate), P(dw), P(db), T, C, K, int(ctx.silu), ctx.nn, ctx.G,
                               *ctx.splits[:2], *p) for p in native.rows(batch)])
        elif ctx.nn:
            native.run(l2_bwd, [(P(x), P(w), P(bias), P(state), P(dys[0]), P(r), P(dx), P(dstate),
                                 P(dw), P(db), T, C, K, int(ctx.silu), ctx.nn, ctx.G, *p)
                                for p in native.rows(batch)])
        else:
            native.run(bwd, [(P(x), P(w), P(bias), P(state), P(dys[0]), P(dx), P(dstate), P(dw),
                              P(db), T, C, K, int(ctx.silu), *p) for p in native.rows(batch)])
        return (None, dx, dw.sum(0).t(), None if bias is None else db.sum(0), dstate, None, None,
                None, None, None)


def short_conv(lib, x, weight, bias, state, silu, norm_groups=0, group=1, sqrt_eps=False,
               splits=None):
    """(y, new state): `lib` = native.load("conv"); weight, bias, state in x's dtype.
    norm_groups > 0: the first norm_groups groups of `group` channels of y are then L2
    normalised, y / max(|y|, 1e-6) (sqrt_eps: y / sqrt(|y|^2 + 1e-6)), as
    layers._delta_block.l2norm does to the delta layers' q and k heads. splits: three
    channel widths summing to C: y is then the tuple of those pieces, each contiguous
    (batch, T, width) (y.split(splits, -1), made contiguous, without the copies)."""
    K = weight.shape[1]
    if splits is not None:
        splits = tuple(int(n) for n in splits)
        if len(splits) != 3 or sum(splits) != x.shape[-1] or min(splits) < 1:
            raise ValueError(f"short_conv: splits must be three positive widths summing to "
                             f"{x.shape[-1]}, got {splits}")
    y = _NativeConv.apply(lib, x, weight, bias, state, silu, norm_groups, group, sqrt_eps,
                          splits)
    xp = torch.cat([state, x], dim=1) if x.shape[1] < K - 1 else x
    return y, xp[:, xp.shape[1] - (K - 1):]


def load():
    return native.load("conv")


class _ScaledValues(first_order.Transformable):
    """(v = x u[..., None], x): Mamba-2's values dt x beside the conv, and x itself for the
    skip D x. The backward sums x's two gradients and makes u's in one C pass (conv.c's
    scale_bwd): dx = u dv + dxs, du = x . dv (autograd's MulBackward and its add of the two
    gradients read and wrote the (B, T, H, V) tensors five times)."""

    @staticmethod
    def forward(ctx, lib, x, u):
        ctx.save_for_backward(x, u)
        ctx.lib = lib
        return x * u[..., None], x.view_as(x)

    @staticmethod
    def backward(ctx, dv, dxs):
        x, u = ctx.saved_tensors
        if dv is None:
            return None, dxs, None
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            dx = dv * u[..., None]
            return None, dx if dxs is None else dx + dxs, (dv * x).sum(-1)
        dv = dv.contiguous()
        dxs = None if dxs is None else dxs.contiguous()
        dx, du = torch.empty_like(x), torch.empty_like(u)
        n, V = u.numel(), x.shape[-1]
        P = native.ptr
        fn = native.kernel(ctx.lib, "scale_bwd", x.dtype, [ctypes.c_void_p] * 6 + [ctypes.c_long] * 3)
        native.run(fn, [(P(x), P(u), P(dv), P(dxs), P(dx), P(du), V, *p) for p in native.rows(n)])
        return None, dx, du


def scaled_values(lib, x, u):
    """(x u[..., None], x) for x (..., V) contiguous and u (...) in x's dtype: a value scaled
    per row and the row itself, whose gradients the backward sums in one C pass (`lib` =
    load())."""
    return _ScaledValues.apply(lib, x.contiguous(), u.contiguous())
