"""The delta layers' output head, y = RMSNorm_heads(x) w act(z), fused in C (head_norm.c):
one pass a row each way where F.rms_norm, the weight, the gate and its activation take
several, each with its backward. layers/_delta_block.py keeps the PyTorch form as the
fallback (`ops.backend.use_native`, or the kernel not built).

x, z: (..., W) of one float dtype (float32 or float64) on the CPU, W = heads x G channels
(the norm per group of G); w: (W,); z None for no gate; act "silu" or "sigmoid".
Differentiable in x, z and w; threads split the rows, each writing its own slice of dw,
summed after.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native

_ACT = {None: 0, "silu": 1, "sigmoid": 2}


def load():
    return native.load("head_norm")


def _kernels(lib, dtype):
    P, L, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    real = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "head_norm_fwd", dtype, [P] * 5 + [L, L, real, i32, L, L]),
            native.kernel(lib, "head_norm_bwd", dtype, [P] * 8 + [L, L, i32, L, L]))


class _HeadNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, z, w, G, eps, act):
        shape, W = x.shape, x.shape[-1]
        x2 = x.contiguous().view(-1, W)
        z2 = None if z is None else z.contiguous().view(-1, W)
        w = w.contiguous()
        rows = x2.shape[0]
        y, r = torch.empty_like(x2), x2.new_empty(rows, W // G)
        fwd, _ = _kernels(lib, x.dtype)
        P = native.ptr
        native.run(fwd, [(P(x2), P(z2), P(w), P(y), P(r), W, G, eps, act, *p)
                         for p in native.rows(rows)])
        ctx.save_for_backward(x2, z2, w, r)
        ctx.lib, ctx.G, ctx.act, ctx.shape = lib, G, act, shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, w, r = ctx.saved_tensors
        rows, W = x2.shape
        dy = dy.contiguous().view(rows, W)
        parts = native.rows(rows)
        dx = torch.empty_like(x2)
        dz = None if z2 is None else torch.empty_like(x2)
        dw = x2.new_empty(len(parts), W)
        _, bwd = _kernels(ctx.lib, x2.dtype)
        P = native.ptr
        native.run(bwd, [(P(x2), P(z2), P(w), P(r), P(dy), P(dx), P(dz), P(dw[i]), W, ctx.G,
                          ctx.act, a, b) for i, (a, b) in enumerate(parts)])
        shape = ctx.shape
        return (None, dx.view(shape), None if dz is None else dz.view(shape), dw.sum(0),
                None, None, None)


def head_norm(lib, x, w, G, eps, z=None, act=None):
    """RMSNorm over each group of G channels of x (..., W), times w (W,), times act(z)
    (z None: no gate; act "silu" or "sigmoid"); `lib` = load()."""
    return _HeadNorm.apply(lib, x, z, w, G, eps, 0 if z is None else _ACT[act])
