"""The gated output heads, fused in C (gated_norm.c); each layer keeps its PyTorch form as
the fallback (`ops.backend.use_native`, or the kernel not built).

    gate_rms:  out = RMSNorm_groups((y + s xs) silu(z)) w      (norm=False: no norm, no w)
    norm_gate: out = (LayerNorm_groups(y) w + b + s xs) silu(z)
    rms_norm_gate: either order of an RMSNorm and a gate, the one kernel behind gate_rms
               (mamba2, mamba, longhorn) and `ops.native.head_norm.rms_gate` (the norm, then
               the gate: the delta, gla, gsa, hgrn2 and lightnet heads)

y, xs, z: (..., W) of one float dtype (float32 or float64) on the CPU; s, w, b: (W,);
groups of n contiguous channels; xs and s may be None (no skip). Differentiable in every
tensor; threads split the rows, each writing its own slice of the parameter gradients,
summed after.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from rnnzoo.ops import first_order, native


def load():
    return native.load("gated_norm")


def _kernel(lib, name, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    real = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return native.kernel(lib, name, dtype, {"rms_gate_fwd": [P] * 7 + [L, L, real] + [L] * 7,
                                            "rms_gate_bwd": [P] * 12 + [L] * 9,
                                            "norm_gate_fwd": [P] * 8 + [L, L, real, L, L],
                                            "norm_gate_bwd": [P] * 14 + [L, L, L, L]}[name])


def _flat(t, W):
    return None if t is None else t.contiguous().view(-1, W)


def _rows(t, W):
    """t (..., W) as (rows, W) with unit column stride, a view where the rows are evenly
    spaced (a slice of a wider tensor's channels), else a copy; and its row stride."""
    if t is None:
        return None, W
    t2 = t.reshape(-1, W)
    if t2.stride(1) != 1 or t2.stride(0) < W:
        t2 = t2.contiguous()
    return t2, t2.stride(0)


def _torch_rms_gate(y, xs, s, z, w, n, eps, act, pre, norm):
    """rms_norm_gate in PyTorch (act as in ACTS): the form _RMSGate's `twice` differentiates."""
    a = y if xs is None else y + s.reshape(-1) * xs
    A = None if not act else (F.silu(z) if act == 1 else torch.sigmoid(z))
    if pre and A is not None:
        a = a * A
    if norm:
        g = a.unflatten(-1, (-1, n))
        a = (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)).flatten(-2)
        a = a if w is None else a * w.reshape(-1)
    return a if pre or A is None else a * A


def _torch_norm_gate(y, xs, s, z, w, b, n, eps):
    """norm_gate in PyTorch: the form _NormGate's `twice` differentiates."""
    a = F.layer_norm(y.unflatten(-1, (-1, n)), (n,), eps=eps).flatten(-2) * w.reshape(-1)
    a = a + b.reshape(-1)
    return (a if xs is None else a + s.reshape(-1) * xs) * F.silu(z)


class _RMSGate(first_order.Function):
    @staticmethod
    def forward(ctx, lib, y, xs, s, z, w, n, eps, act, pre, norm):
        orig = (y, xs, s, z, w)  # for `twice` (the views below carry no autograd history)
        shape, W = y.shape, y.shape[-1]
        y2 = _flat(y, W)  # xs, z may be strided rows (a slice of a projection's channels)
        (xs2, xst), (z2, zst) = _rows(xs, W), _rows(z, W)
        ctx.w_shape = None if w is None else w.shape
        s, w = (None if t is None else t.contiguous().view(W) for t in (s, w))
        rows = y2.shape[0]
        out = torch.empty_like(y2)
        stats = y2.new_empty(rows, W // n) if norm else None
        fwd = _kernel(lib, "rms_gate_fwd", y.dtype)
        native.run(fwd, [(native.ptr(y2), native.ptr(xs2), native.ptr(s), native.ptr(z2), native.ptr(w), native.ptr(out),
                          native.ptr(stats), W, n, eps, act, pre, int(norm), xst, zst, *p)
                         for p in native.rows(rows)])
        ctx.save_for_backward(y2, xs2, s, z2, w, stats, *orig)
        ctx.lib, ctx.n, ctx.shape, ctx.flags = lib, n, shape, (act, pre, int(norm), xst, zst)
        ctx.eps, ctx.norm = eps, norm
        return out.view(shape)

    @staticmethod
    def twice(ctx, g):
        act, pre = ctx.flags[:2]
        return (None, *first_order.replay(_torch_rms_gate, (*ctx.saved_tensors[6:], ctx.n, ctx.eps,
                                                             act, pre, ctx.norm), (g,),
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, g):
        y2, xs2, s, z2, w, stats = ctx.saved_tensors[:6]
        rows, W = y2.shape
        g = g.contiguous().view(rows, W)
        parts = native.rows(rows)
        dy = torch.empty_like(y2)
        dz = None if z2 is None else torch.empty_like(y2)
        dxs = None if xs2 is None else torch.empty_like(y2)
        dw = None if w is None else y2.new_empty(len(parts), W)
        ds = None if xs2 is None else y2.new_empty(len(parts), W)
        bwd = _kernel(ctx.lib, "rms_gate_bwd", y2.dtype)
        native.run(bwd, [(native.ptr(y2), native.ptr(xs2), native.ptr(s), native.ptr(z2), native.ptr(w), native.ptr(stats), native.ptr(g),
                          native.ptr(dy), native.ptr(dxs), native.ptr(dz),
                          native.ptr(None if dw is None else dw[i]),
                          native.ptr(None if ds is None else ds[i]), W, ctx.n, *ctx.flags, a, b)
                         for i, (a, b) in enumerate(parts)])
        shape = ctx.shape
        return (None, dy.view(shape), None if dxs is None else dxs.view(shape),
                None if ds is None else ds.sum(0), None if dz is None else dz.view(shape),
                None if dw is None else dw.sum(0).view(ctx.w_shape), None, None, None, None, None)


class _NormGate(first_order.Function):
    @staticmethod
    def forward(ctx, lib, y, xs, s, z, w, b, n, eps):
        orig = (y, xs, s, z, w, b)  # for `twice`
        shape, W = y.shape, y.shape[-1]
        y2, xs2, z2 = _flat(y, W), _flat(xs, W), _flat(z, W)
        s, w, b = (None if t is None else t.contiguous() for t in (s, w, b))
        rows = y2.shape[0]
        out = torch.empty_like(y2)
        stats = y2.new_empty(rows, W // n, 2)
        fwd = _kernel(lib, "norm_gate_fwd", y.dtype)
        native.run(fwd, [(native.ptr(y2), native.ptr(xs2), native.ptr(s), native.ptr(z2), native.ptr(w), native.ptr(b), native.ptr(out),
                          native.ptr(stats), W, n, eps, *p) for p in native.rows(rows)])
        ctx.save_for_backward(y2, xs2, s, z2, w, b, stats, *orig)
        ctx.lib, ctx.n, ctx.shape, ctx.eps = lib, n, shape, eps
        return out.view(shape)

    @staticmethod
    def twice(ctx, g):
        return (None, *first_order.replay(_torch_norm_gate, (*ctx.saved_tensors[7:], ctx.n,
                                                              ctx.eps), (g,),
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, g):
        y2, xs2, s, z2, w, b, stats = ctx.saved_tensors[:7]
        rows, W = y2.shape
        g = g.contiguous().view(rows, W)
        parts = native.rows(rows)
        dy, dz = torch.empty_like(y2), torch.empty_like(y2)
        dxs = None if xs2 is None else torch.empty_like(y2)
        dw, db = y2.new_empty(len(parts), W), y2.new_empty(len(parts), W)
        ds = None if xs2 is None else y2.new_empty(len(parts), W)
        bwd = _kernel(ctx.lib, "norm_gate_bwd", y2.dtype)
        native.run(bwd, [(native.ptr(y2), native.ptr(xs2), native.ptr(s), native.ptr(z2), native.ptr(w), native.ptr(b), native.ptr(stats),
                          native.ptr(g), native.ptr(dy), native.ptr(dxs), native.ptr(dz), native.ptr(dw[i]), native.ptr(db[i]),
                          native.ptr(None if ds is None else ds[i]), W, ctx.n, a, b_)
                         for i, (a, b_) in enumerate(parts)])
        shape = ctx.shape
        return (None, dy.view(shape), None if dxs is None else dxs.view(shape),
                None if ds is None else ds.sum(0), dz.view(shape), dw.sum(0), db.sum(0),
                None, None)


ACTS = {None: 0, "silu": 1, "sigmoid": 2}


def rms_norm_gate(lib, y, xs, s, z, w, n, eps, act, pre, norm=True):
    """(y + s xs) act(z) under an RMSNorm over groups of n channels times w (pre=True: the
    gate before the norm), or RMSNorm_groups(y + s xs) w act(z) (pre=False); norm=False:
    no norm (w None). act: None (z unused), "silu" or "sigmoid"; xs, s None: no skip; w
    (W entries, any shape). `lib` = load()."""
    return _RMSGate.apply(lib, y, xs, s, z if act else None, w, n, eps, ACTS[act], int(pre),
                          norm)


def gate_rms(lib, y, xs, s, z, w, n, eps, norm=True):
    """RMSNorm_groups((y + s xs) silu(z)) w (norm=False: (y + s xs) silu(z), w None);
    `lib` = load()."""
    return rms_norm_gate(lib, y, xs, s, z, w, n, eps, "silu", True, norm)


def norm_gate(lib, y, xs, s, z, w, b, n, eps):
    """(LayerNorm_groups(y) w + b + s xs) silu(z); `lib` = load()."""
    return _NormGate.apply(lib, y, xs, s, z, w, b, n, eps)
