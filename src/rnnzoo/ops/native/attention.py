"""Row kernels of the attention family on the CPU, in C (attention.c), each differentiable:

    stick_breaking(lib, z, visible) -> A     the stick-breaking weights (Tan et al. 2024,
        arXiv:2410.17980) A_ij = sigmoid(z_ij) prod_{l > j visible} sigmoid(-z_il), 0 where
        key j is not visible; z (B, H, Tq, Tk), visible (B, 1, Tq, Tk) bool (keys in
        position order). One pass a row each way, instead of a dozen (B, H, Tq, Tk)
        tensors through autograd (layers.stickbreaking_attention keeps that form as its
        fallback). Saves z and A for the backward.
    pairs(lib, x, w, lin) -> psi             ops.feature_maps.packed's features: x (..., d)
        -> (..., [1 + d +] d (d + 1) / 2), [1, x] first when lin, then w_p x_a x_b over the
        pairs a <= b in row-major order (w (P,)); gradient in x only.

All float32 or all float64 on the CPU (`ops.backend.use_native` decides); `lib` = load().
Rows are split over torch.get_num_threads() threads (ctypes lets go of the GIL).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native


def load():
    return native.load("attention")


def _kernel(lib, name, dtype):
    P, L, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return native.kernel(lib, name, dtype, {"sb_fwd": [P] * 3 + [L] * 5,
                                            "sb_bwd": [P] * 5 + [L] * 5,
                                            "pairs_fwd": [P] * 3 + [L, i32, L, L],
                                            "pairs_bwd": [P] * 4 + [L, i32, L, L]}[name])


def _run(fn, ptrs, extra, rows):
    native.run(fn, [(*ptrs, *extra, *p) for p in native.rows(rows) or [(0, 0)]])


class _StickBreaking(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, z, visible):
        z = z.contiguous()
        B, H, Tq, Tk = z.shape
        m = visible.expand(B, 1, Tq, Tk).contiguous()
        A = torch.empty_like(z)
        _run(_kernel(lib, "sb_fwd", z.dtype), [native.ptr(t) for t in (z, m, A)],
             (H, Tq, Tk), B * H * Tq)
        ctx.save_for_backward(z, m, A)
        ctx.lib = lib
        return A

    @staticmethod
    def backward(ctx, dA):
        z, m, A = ctx.saved_tensors
        B, H, Tq, Tk = z.shape
        dA = dA.contiguous()
        dz = torch.empty_like(z)
        _run(_kernel(ctx.lib, "sb_bwd", z.dtype), [native.ptr(t) for t in (z, m, A, dA, dz)],
             (H, Tq, Tk), B * H * Tq)
        return None, dz, None


def stick_breaking(lib, z, visible):
    """A (B, H, Tq, Tk) from logits z (B, H, Tq, Tk) and visible (B, 1, Tq, Tk) bool."""
    return _StickBreaking.apply(lib, z, visible)


class _Pairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, w, lin):
        x, w = x.contiguous(), w.contiguous()
        d = x.shape[-1]
        F = (1 + d if lin else 0) + d * (d + 1) // 2
        out = x.new_empty(*x.shape[:-1], F)
        rows = x.numel() // d if d else 0
        _run(_kernel(lib, "pairs_fwd", x.dtype), [native.ptr(t) for t in (x, w, out)],
             (d, int(lin)), rows)
        ctx.save_for_backward(x, w)
        ctx.lib, ctx.lin = lib, lin
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        d = x.shape[-1]
        g = g.contiguous()
        dx = torch.empty_like(x)
        _run(_kernel(ctx.lib, "pairs_bwd", x.dtype), [native.ptr(t) for t in (x, w, g, dx)],
             (d, int(ctx.lin)), x.numel() // d if d else 0)
        return None, dx, None, None


def pairs(lib, x, w, lin: bool):
    """psi (..., [1 + d +] P) from x (..., d) and the pair weights w (P,)."""
    return _Pairs.apply(lib, x, w, lin)
