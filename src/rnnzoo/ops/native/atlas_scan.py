"""A chunk of ATLAS's momenta and memories as their recurrences in C (atlas_scan.c), the
form ops.atlas.atlas_chunked takes on the CPU instead of one (C, C + window) product of the
window's materialised outer products and one (C, C + 1) product of the memories:

    S_t = e_t S_{t-1} - w_t sum_{i=t}^{t+W1} u_i v_i^T     (each weight's block; S_{-1} = S0)
    M_t = a_t M_{t-1} + c_t U_t                               (M_{-1} = M0)

on the packed states (..., N): every weight's short-side-first s x l matrix flattened, side
by side (ops.atlas._pack). u (..., C + W1, s), v (..., C + W1, l) per weight (one or two);
e, w, a, c (..., C); U (..., C, N). float32 or float64 on the CPU
(`ops.backend.use_native`); threads split the rows (the leading dims). Differentiable in
every input (the backward runs each recurrence back; S_{t-1}, M_{t-1} read from the
outputs).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from rnnzoo.ops import native


def load():
    return native.load("atlas_scan")


def _run(lib, name, dtype, tensors, ints, R):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, dtype, [P] * len(tensors) + [L] * (len(ints) + 2))
    ptrs = [native.ptr(t) for t in tensors]
    native.run(fn, [(*ptrs, *ints, p0, p1) for p0, p1 in native.rows(R)])


class _Momenta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, W1, S0, e, w, u1, v1, u2, v2):
        S0, e, w, u1, v1 = (t.contiguous() for t in (S0, e, w, u1, v1))
        u2, v2 = (None if t is None else t.contiguous() for t in (u2, v2))
        C, N = e.shape[-1], S0.shape[-1]
        R = e.numel() // C
        dims = (u1.shape[-1], v1.shape[-1], 0 if u2 is None else u2.shape[-1],
                0 if v2 is None else v2.shape[-1], C, W1)
        St = S0.new_empty(*e.shape, N)
        _run(lib, "mom_fwd", S0.dtype, (S0, u1, v1, u2, v2, e, w, St), dims, R)
        ctx.save_for_backward(S0, e, w, u1, v1, u2, v2, St)
        ctx.lib, ctx.dims, ctx.R = lib, dims, R
        return St

    @staticmethod
    @once_differentiable
    def backward(ctx, dSt):
        S0, e, w, u1, v1, u2, v2, St = ctx.saved_tensors
        grads = [torch.empty_like(t) if t is not None else None
                 for t in (S0, u1, v1, u2, v2, e, w)]
        _run(ctx.lib, "mom_bwd", S0.dtype, (S0, u1, v1, u2, v2, e, w, St, dSt.contiguous(),
                                            *grads), ctx.dims, ctx.R)
        dS0, du1, dv1, du2, dv2, de, dw = grads
        return None, None, dS0, de, dw, du1, dv1, du2, dv2


class _Memories(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, M0, U, a, c):
        M0, U, a, c = (t.contiguous() for t in (M0, U, a, c))
        C, N = a.shape[-1], M0.shape[-1]
        Ms = torch.empty_like(U)
        _run(lib, "mem_fwd", M0.dtype, (M0, U, a, c, Ms), (N, C), a.numel() // C)
        ctx.save_for_backward(M0, U, a, c, Ms)
        ctx.lib = lib
        return Ms

    @staticmethod
    @once_differentiable
    def backward(ctx, dMs):
        M0, U, a, c, Ms = ctx.saved_tensors
        C, N = a.shape[-1], M0.shape[-1]
        grads = [torch.empty_like(t) for t in (M0, U, a, c)]
        _run(ctx.lib, "mem_bwd", M0.dtype, (M0, U, a, c, Ms, dMs.contiguous(), *grads), (N, C),
             a.numel() // C)
        return None, *grads


def momenta(lib, S0, e, w, pairs, W1):
    """S_t (..., C, N) of every step of a chunk; S0 (..., N), e, w (..., C), pairs [(u, v)]
    per weight (one or two), W1 = window - 1; `lib` = load()."""
    (u1, v1), (u2, v2) = pairs[0], (pairs[1] if len(pairs) > 1 else (None, None))
    return _Momenta.apply(lib, W1, S0, e, w, u1, v1, u2, v2)


def memories(lib, M0, U, a, c):
    """M_t (..., C, N) of every step of a chunk; M0 (..., N), U (..., C, N), a, c (..., C)."""
    return _Memories.apply(lib, M0, U, a, c)
