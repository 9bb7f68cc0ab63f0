"""Lattice's orthogonal slot recurrence (ops/lattice.py) in C (lattice_scan.c), forward and
backward by hand: the (m, V) slots of one (batch row, head) pair stay in cache, a step is a
few passes over them; the forward keeps the state every 32 steps and, every step, the error
and three scalars a slot, from which the backward recomputes the states in one pass a slot. The PyTorch
loop it replaces runs ~15 small ops a step under autograd.

q, k: (B, T, H, m); v: (B, T, H, V); beta: (B, T, H); S0: (B, H, m, V); all one dtype
(float32 or float64) on the CPU (`ops.backend.use_native`). Returns o (B, T, H, V) and S_T,
differentiable in all five. Threads split the (batch row, head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native

CK = 32  # the C file's checkpoint interval


def load():
    return native.load("lattice_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "lattice_fwd", dtype, [P] * 9 + [L] * 6),
            native.kernel(lib, "lattice_bwd", dtype, [P] * 13 + [L] * 6))


class _NativeLattice(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, beta, S0, plain):
        orig = (q, k, v, beta, S0)  # for `twice` (the copies below have no autograd history)
        q, k, v, beta, S0 = (t.contiguous() for t in (q, k, v, beta, S0))
        B, T, H, M = q.shape
        V = v.shape[-1]
        o, ST = torch.empty_like(v), torch.empty_like(S0)
        ck = S0.new_empty(B, H, -(-T // CK), M, V)
        aux = S0.new_empty(B, H, T, V + 3 * M)  # per step: e, |s_i|^2, a_i, |w_i|
        fwd, _ = _kernels(lib, q.dtype)
        p = native.ptr
        native.run(fwd, [(p(q), p(k), p(v), p(beta), p(S0), p(o), p(ST), p(ck), p(aux), T, H, M,
                          V, *r) for r in native.rows(B * H)])
        ctx.save_for_backward(q, k, v, beta, ck, aux, *orig)
        ctx.lib, ctx.plain = lib, plain
        return o, ST

    @staticmethod
    def twice(ctx, do, dST):
        return (None, *first_order.replay(ctx.plain, ctx.saved_tensors[6:], (do, dST),
                                          ctx.needs_input_grad[1:6]), None)

    @staticmethod
    def backward(ctx, do, dST):
        q, k, v, beta, ck, aux = ctx.saved_tensors[:6]
        B, T, H, M = q.shape
        V = v.shape[-1]
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dST = None if dST is None else dST.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbeta, dS0 = torch.empty_like(beta), v.new_empty(B, H, M, V)
        _, bwd = _kernels(ctx.lib, q.dtype)
        p = native.ptr
        native.run(bwd, [(p(q), p(k), p(v), p(beta), p(ck), p(aux), p(dST), p(do), p(dq), p(dk),
                          p(dv), p(dbeta), p(dS0), T, H, M, V, *r) for r in native.rows(B * H)])
        return None, dq, dk, dv, dbeta, dS0, None


def lattice(lib, q, k, v, beta, S0, plain):
    """(o, S_T); `lib` = load(); plain(q, k, v, beta, S0) -> (o, S_T): the same recurrence
    in PyTorch (ops.lattice's loop), which the node's `twice` differentiates (lattice's
    mode='sequential' runs this kernel)."""
    return _NativeLattice.apply(lib, q, k, v, beta, S0, plain)
