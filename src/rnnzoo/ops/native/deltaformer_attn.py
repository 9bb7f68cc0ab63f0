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


def _masked_softmax(scores, visible):
    low = torch.finfo(scores.dtype).min
    return torch.softmax(scores.masked_fill(~visible, low), -1) * visible


def _torch_attend(scale, q, k, v, beta):
    """(o, u) in PyTorch (layers.deltaformer's form on a fresh sequence: the (T, T) scores,
    one triangular solve): the form _NativeDeltaFormer's `twice` differentiates."""
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) * scale
    i = torch.arange(T, device=q.device)
    P = _masked_softmax(scores, i[None, :] < i[:, None])
    eye = torch.eye(T, dtype=q.dtype, device=q.device)
    u = torch.linalg.solve_triangular(eye + beta[..., None] * P, v, upper=False,
                                      unitriangular=True)
    return _masked_softmax(scores, i[None, :] <= i[:, None]) @ u, u


class _NativeDeltaFormer(first_order.Function):
    @staticmethod
    def forward(ctx, lib, scale, q, k, v, beta):
        orig = (q, k, v, beta)  # for `twice` (the copies below have no autograd history)
        q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
        B, H, T, D = q.shape
        u, w, o = torch.empty_like(v), torch.empty_like(v), torch.empty_like(v)
        L = beta.new_empty(B, H, T)
        fwd, _ = _kernels(lib, q.dtype)
        P = native.ptr
        native.run(fwd, [(P(q), P(k), P(v), P(beta), P(u), P(w), P(o), P(L), T, D, scale, *r)
                         for r in native.rows(B * H)])
        ctx.save_for_backward(q, k, beta, u, w, L, *orig)
        ctx.lib, ctx.scale = lib, scale
        return o, u

    @staticmethod
    def twice(ctx, do, du):
        return (None, *first_order.replay(_torch_attend, (ctx.scale, *ctx.saved_tensors[6:]),
                                          (do, du), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do, du):
        q, k, beta, u, w, L = ctx.saved_tensors[:6]
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
