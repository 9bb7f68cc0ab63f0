"""DeltaFormer's attention of a fresh sequence (no cache) in C (deltaformer_attn.c), forward
and backward, row by row: the residues u_t = v_t - beta_t sum_{j<t} P_tj u_j by forward
substitution as the rows are reached, and the output read through the same row of scores,
so no (T, T) score, softmax or triangular-system matrix is ever formed (the PyTorch form
makes and passes over several, forward and backward). The backward recomputes each row's
scores from its stored log-normaliser and runs the rows in reverse.

q, k, v: (B, H, T, D); beta: (B, H, T); all one dtype (float32 or float64) on the CPU
(`ops.backend.use_native`), finite (the layer's `finite`). Returns (o, u), both (B, H, T, D),
differentiable in q, k, v and beta. Threads split the (batch row, head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("deltaformer_attn")


def _kernels(lib, dtype):
    P, L, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
    return (native.kernel(lib, "dfa_fwd", dtype, [P] * 8 + [L, L, D, L, L]),
            native.kernel(lib, "dfa_bwd", dtype, [P] * 12 + [L, L, D, L, L]))


class _NativeDeltaFormer(first_order.Function):
    @staticmethod
    def forward(ctx, lib, scale, q, k, v, beta):
        q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
        B, H, T, D = q.shape
        u, w, o = torch.empty_like(v), torch.empty_like(v), torch.empty_like(v)
        L = beta.new_empty(B, H, T)
        fwd, _ = _kernels(lib, q.dtype)
        P = native.ptr
        native.run(fwd, [(P(q), P(k), P(v), P(beta), P(u), P(w), P(o), P(L), T, D, scale, *r)
                         for r in native.rows(B * H)])
        ctx.save_for_backward(q, k, beta, u, w, L)
        ctx.lib, ctx.scale = lib, scale
        return o, u

    @staticmethod
    def backward(ctx, do, du):
        q, k, beta, u, w, L = ctx.saved_tensors
        B, H, T, D = q.shape
        do = torch.zeros_like(u) if do is None else do.contiguous()
        du = None if du is None else du.contiguous()
        dq, dk, dv, dbeta = (torch.empty_like(t) for t in (q, k, u, beta))
        _, bwd = _kernels(ctx.lib, q.dtype)
        P = native.ptr
        native.run(bwd, [(P(q), P(k), P(beta), P(u), P(w), P(L), P(do), P(du), P(dq), P(dk),
                          P(dv), P(dbeta), T, D, ctx.scale, *r) for r in native.rows(B * H)])
        return None, None, dq, dk, dv, dbeta


def attend(lib, q, k, v, beta, scale: float):
    """(o, u); `lib` = load()."""
    return _NativeDeltaFormer.apply(lib, scale, q, k, v, beta)
