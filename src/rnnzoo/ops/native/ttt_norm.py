"""The gradient of test-time training's inner loss through its layer norm in C (ttt_norm.c),
a row at a time, with its backward:

    norm_loss_grad(lib, z, target, w, b, eps, plain) -> G = d/dz 1/2 |LN(z) w + b - target|^2

z, target: (B, H, M, D) contiguous rows; w, b: (H, D) the inner norm's weight and bias; G
(B, H, M, D). Differentiable in z, target, w and b (under create_graph, `twice`
differentiates `plain`). Equal to ops.memory's layer_norm and _layer_norm_grad to rounding. float32 or float64 on the CPU
(`ops.backend.use_native` decides); threads split the rows.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from rnnzoo.ops import first_order, native


def load():
    return native.load("ttt_norm")


def _call(lib, name, tensors, D, per, H, eps, n_rows):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, tensors[0].dtype, [P] * len(tensors) + [L] * 3
                       + [ctypes.c_double, L, L])
    ptrs = [native.ptr(t) for t in tensors]
    native.run(fn, [(*ptrs, D, per, H, eps, *p) for p in native.rows(n_rows) or [(0, 0)]])


def _torch_inner_output(eps, q, z, w, b):
    """inner_output in PyTorch: the form _InnerOutput's `twice` differentiates."""
    return torch.addcmul(q + b, F.layer_norm(z, z.shape[-1:], eps=eps), w)


class _NormLossGrad(first_order.Function):
    @staticmethod
    def forward(ctx, lib, eps, z, target, w, b, plain):
        orig = (z, target, w, b)  # for `twice` (.contiguous() copies have no history)
        z, target, w, b = (t.contiguous() for t in (z, target, w, b))
        H, per, D = z.shape[-3:]
        G = torch.empty_like(z)
        _call(lib, "ttt_norm_fwd", (z, target, w, b, G), D, per, H, eps, z.numel() // D)
        ctx.save_for_backward(z, target, w, b, *orig)
        ctx.lib, ctx.eps, ctx.plain = lib, eps, plain
        return G

    @staticmethod
    def twice(ctx, dG):
        return (None, None, *first_order.replay(
            ctx.plain, (*ctx.saved_tensors[4:], ctx.eps), (dG,), ctx.needs_input_grad[2:6]), None)

    @staticmethod
    def backward(ctx, dG):
        z, target, w, b = ctx.saved_tensors[:4]
        H, per, D = z.shape[-3:]
        dz, dt, dw, db = (torch.empty_like(z) for _ in range(4))
        _call(ctx.lib, "ttt_norm_bwd", (z, target, w, b, dG.contiguous(), dz, dt, dw, db),
              D, per, H, ctx.eps, z.numel() // D)
        rows = [i for i in range(z.dim()) if i != z.dim() - 3 and i != z.dim() - 1]
        return None, None, dz, dt, dw.sum(rows), db.sum(rows), None


def norm_loss_grad(lib, z, target, w, b, eps: float, plain):
    """G (B, H, M, D) = the loss's gradient in z; `lib` = load(); plain(z, target, w, b, eps)
    -> G: the same in PyTorch (ops.memory's), which the node's `twice` differentiates."""
    return _NormLossGrad.apply(lib, float(eps), z, target, w, b, plain)


class _InnerOutput(first_order.Function):
    @staticmethod
    def forward(ctx, lib, eps, q, z, w, b):
        orig = (q, z, w, b)  # for `twice`
        q, z, w, b = (t.contiguous() for t in (q, z, w, b))
        H, D = z.shape[-2:]
        o = torch.empty_like(z)
        _call(lib, "ttt_out_fwd", (q, z, w, b, o), D, 1, H, eps, z.numel() // D)
        ctx.save_for_backward(z, w, *orig)
        ctx.lib, ctx.eps = lib, eps
        return o

    @staticmethod
    def twice(ctx, g):
        return (None, *first_order.replay(_torch_inner_output, (ctx.eps, *ctx.saved_tensors[2:]),
                                          (g,), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, g):
        z, w = ctx.saved_tensors[:2]
        H, D = z.shape[-2:]
        g = g.contiguous()
        dz = torch.empty_like(z)
        parts = native.rows(z.numel() // D) or [(0, 0)]
        dw, db = (z.new_empty(len(parts), H, D) for _ in range(2))
        fn = native.kernel(ctx.lib, "ttt_out_bwd", z.dtype, [ctypes.c_void_p] * 6
                           + [ctypes.c_long] * 3 + [ctypes.c_double, ctypes.c_long,
                                                    ctypes.c_long])
        P = native.ptr
        native.run(fn, [(P(z), P(w), P(g), P(dz), P(dw[i]), P(db[i]), D, 1, H, ctx.eps, r0, r1)
                        for i, (r0, r1) in enumerate(parts)])
        return None, None, g, dz, dw.sum(0), db.sum(0)


def inner_output(lib, q, z, w, b, eps: float):
    """o = q + LN(z) w + b: q, z (..., H, D), w, b (H, D) (the TTT layers' output, ops.memory's
    inner_output, one pass each way); `lib` = load()."""
    return _InnerOutput.apply(lib, float(eps), q, z, w, b)
