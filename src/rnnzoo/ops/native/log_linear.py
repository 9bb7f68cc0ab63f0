"""Log-linear attention's intra-chunk block in C (log_linear.c), forward and backward:
y = (Q K^T o M) V per chunk with M[t, s] = lam[t, lev(t, s)] e^(G_t - G_s) (s <= t), the
level of each pair from the offsets themselves (Fenwick runs of a chunk on the aligned grid,
`ops.log_linear._aligned`). Heads first: q, k (B, H, N, C, K), v (.., V), G (B, H, N, C),
lam (B, H, N, C, L); float32 or float64 on the CPU (`ops.backend.use_native`). Differentiable
in all five; threads split the (batch, head, chunk) blocks. The PyTorch form is
`ops.log_linear._Intra` (the fallback and the test's oracle)."""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native

TILE = 32  # rows of a causal tile: its products run over columns [0, i1) only


def load():
    return native.load("log_linear")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "ll_intra_fwd", dtype, [P] * 7 + [L] * 7),
            native.kernel(lib, "ll_intra_bwd", dtype, [P] * 12 + [L] * 7),
            native.kernel(lib, "ll_inter_fwd", dtype, [P] * 11 + [L] * 8),
            native.kernel(lib, "ll_inter_bwd", dtype, [P] * 18 + [L] * 8))


class _NativeChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, ip, q, k, v, G, lam, f, w, cP, cF):
        B, H, N, C, K = q.shape
        V, L, P, NL = v.shape[-1], lam.shape[-1], ip.shape[0], cF.shape[2]
        NB = B * H * N
        q, k, v, G, lam, f, w, cP, cF = (t.contiguous() for t in (q, k, v, G, lam, f, w, cP, cF))
        y = v.new_empty(v.shape)
        S = q.new_empty(NB, C, C)
        F = v.new_empty(B, H, NL, K, V)
        U = v.new_empty(B, H, N, K, V)
        kern = _kernels(lib, q.dtype)
        native.run(kern[0], [(*(native.ptr(t) for t in (q, k, v, G, lam, y, S)), C, K, V, L,
                              min(TILE, C), *p) for p in native.rows(NB)])
        native.run(kern[2], [(*(native.ptr(t) for t in (q, k, v, f, w, cP, cF, ip, y, F, U)),
                              N, C, K, V, P, NL, *p) for p in native.rows(B * H)])
        ctx.save_for_backward(ip, q, k, v, G, lam, f, w, cP, cF, S, U)
        ctx.lib = lib
        return y, F

    @staticmethod
    def backward(ctx, dy, dF):
        ip, q, k, v, G, lam, f, w, cP, cF, S, U = ctx.saved_tensors
        B, H, N, C, K = q.shape
        V, L, P, NL = v.shape[-1], lam.shape[-1], ip.shape[0], cF.shape[2]
        NB = B * H * N
        dy = torch.zeros_like(v) if dy is None else dy.contiguous()
        dF = None if dF is None else dF.contiguous()
        dq, dk, dv, dG, dlam, df, dw, dcP, dcF = (torch.empty_like(t) for t in (
            q, k, v, G, lam, f, w, cP, cF))
        kern = _kernels(ctx.lib, q.dtype)
        native.run(kern[1], [(*(native.ptr(t) for t in (q, k, v, G, lam, S, dy, dq, dk, dv, dG,
                                                        dlam)), C, K, V, L, min(TILE, C), *p)
                             for p in native.rows(NB)])
        native.run(kern[3], [(*(native.ptr(t) for t in (q, k, v, f, w, cP, cF, ip, U, dy, dF,
                                                        dq, dk, dv, df, dw, dcP, dcF)),
                              N, C, K, V, P, NL, *p) for p in native.rows(B * H)])
        return None, None, dq, dk, dv, dG, dlam, df, dw, dcP, dcF


def chunks(lib, ip, q, k, v, G, lam, f, w, cP, cF):
    """The aligned chunk form's products (`ops.log_linear._aligned`), heads first:
    q, k (B, H, N, C, K), v (.., V), G (B, H, N, C) the decays' running sums within each
    chunk, lam (B, H, N, C, L) the level weights; f (B, H, N, C) the decay of each step to
    its chunk's end, w (B, H, P, C) the pairs' row weights, cP (B, H, P, N) the pairs'
    coefficients of the chunk states, cF (B, H, NL, N) the final buckets', ip (P,) int64 the
    pairs' chunks -> y (B, H, N, C, V): the intra-chunk block (ll_intra) plus the pairs'
    reads, and the final buckets F (B, H, NL, K, V) (ll_inter); `lib` = load()."""
    return _NativeChunks.apply(lib, ip, q, k, v, G, lam, f, w, cP, cF)
