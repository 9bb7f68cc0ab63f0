"""RMSNorm over groups of channels times its weight, times a gate, fused in C (head_norm.c):
the output heads of lightnet, lightning_attention and gla (a gate), gsa and hgrn2 (none).

    rms_gate:  out = RMSNorm_groups(o) w act(z),   act: None, "silu" or "sigmoid"

o, z: (..., W) of one float dtype (float32 or float64) on the CPU (`ops.backend.use_native`);
w: (W,) or any shape of W entries (HeadNorm's (H, n)); groups of n contiguous channels.
Differentiable in o, z and w; threads split the rows, each writing its own slice of w's
gradient, summed after. `torch_rms_gate` is the same in PyTorch (the fallback).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from rnnzoo.ops import backend, native

_ACTS = {None: 0, "silu": 1, "sigmoid": 2}


def load():
    return native.load("head_norm")


class _RMSGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, o, z, w, n, eps, act):
        shape, W = o.shape, o.shape[-1]
        o2 = o.contiguous().view(-1, W)
        z2 = None if z is None else z.contiguous().view(-1, W)
        ctx.w_shape = w.shape
        w = w.contiguous().view(W)
        rows = o2.shape[0]
        out, rstd = torch.empty_like(o2), o2.new_empty(rows, W // n)
        P, L = ctypes.c_void_p, ctypes.c_long
        real = ctypes.c_double if o.dtype == torch.float64 else ctypes.c_float
        fwd = native.kernel(lib, "rms_gate_fwd", o.dtype, [P] * 5 + [L, L, L, real, L, L])
        native.run(fwd, [(native.ptr(o2), native.ptr(z2), native.ptr(w), native.ptr(out),
                          native.ptr(rstd), W, n, act, eps, *p) for p in native.rows(rows)])
        ctx.save_for_backward(o2, z2, w, rstd)
        ctx.lib, ctx.n, ctx.act, ctx.shape = lib, n, act, shape
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout):
        o2, z2, w, rstd = ctx.saved_tensors
        rows, W = o2.shape
        dout = dout.contiguous().view(rows, W)
        parts = native.rows(rows)
        dx = torch.empty_like(o2)
        dz = None if z2 is None else torch.empty_like(o2)
        dw = o2.new_empty(len(parts), W)
        P, L = ctypes.c_void_p, ctypes.c_long
        bwd = native.kernel(ctx.lib, "rms_gate_bwd", o2.dtype, [P] * 8 + [L] * 5)
        native.run(bwd, [(native.ptr(o2), native.ptr(z2), native.ptr(w), native.ptr(rstd),
                          native.ptr(dout), native.ptr(dx), native.ptr(dz), native.ptr(dw[i]),
                          W, ctx.n, ctx.act, a, b) for i, (a, b) in enumerate(parts)])
        shape = ctx.shape
        return (None, dx.view(shape), None if dz is None else dz.view(shape),
                dw.sum(0).view(ctx.w_shape), None, None, None)


def torch_rms_gate(o, w, n, eps, z=None, act=None):
    """The PyTorch form of `rms_gate`."""
    y = F.rms_norm(o.unflatten(-1, (-1, n)), (n,), eps=eps).flatten(-2) * w.reshape(-1)
    if act is None:
        return y
    return y * (F.silu(z) if act == "silu" else torch.sigmoid(z))


def rms_gate(o, w, n, eps, z=None, act=None):
    """RMSNorm over groups of n channels of o (..., W) times w (W entries), times act(z) for
    act "silu" or "sigmoid" (z (..., W)), or nothing (act None). In C on the CPU in
    float32/float64 (`backend.use_native`, w in o's dtype), else `torch_rms_gate`."""
    lib = load() if backend.use_native(o, z, w) else None
    if lib is None:
        return torch_rms_gate(o, w, n, eps, z, act)
    return _RMSGate.apply(lib, o, z if act else None, w, n, eps, _ACTS[act])
