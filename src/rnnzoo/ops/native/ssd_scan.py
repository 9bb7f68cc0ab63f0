"""Mamba-2's SSD (scalar-decay linear attention, q and k shared by groups of heads) in C: the
forward as its recurrence (ssd_scan.c), the (K, V) state of one (batch row, head) in cache,
storing the state at every CHUNK-th step; the backward by chunks from those states
(ssd_chunk.c) on mm.h's register tiles, with the decays' gradients from q . dq - k . dk.
The chunked PyTorch form (ops.chunk.linear._ScalarChunk) runs (C, C) score matrices and many
(B, T, H, V) elementwise passes.

q, k: (B, T, G, K) (q already scaled); v: (B, T, H, V); g: (B, T, H) log-decays; S0:
(B, H, K, V); all one dtype (float32 or float64) on the CPU (`ops.backend.use_native`).
Returns o (B, T, H, V) and S_T, differentiable in all five. Threads split the (batch row,
head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native


def load():
    """(ssd_scan.c's library, ssd_chunk.c's), None unless both build."""
    libs = native.load("ssd_scan"), native.load("ssd_chunk")
    return None if None in libs else libs


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib[0], "ssd_fwd", dtype, [P] * 9 + [L] * 8),
            native.kernel(lib[1], "ssd_bwd_chunk", dtype, [P] * 15 + [L] * 8))


# the backward's chunk length (ssd_bwd_chunk); the forward stores each chunk's start state
# (mamba3's K = 128, V = 64, backward alone, 1 thread: 32 53 ms, 48 54, 64 55; the recurrent
# backward it replaced 63)
CHUNK = 32


class _NativeSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, g, S0, d):
        q, k, v, g, S0 = (t.contiguous() for t in (q, k, v, g, S0))
        d = None if d is None else d.contiguous()
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        L = CHUNK
        o, ST = torch.empty_like(v), torch.empty_like(S0)
        # the chunks' start states (B, H, ceil(T / L), K, V) for the backward, if one will run
        Sc = S0.new_empty(B, H, -(-T // L), K, V) if any(ctx.needs_input_grad) else None
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (q, k, v, g, d, S0, o, ST, Sc))
                         + (L, T, G, H, K, V, *p) for p in native.rows(B * H)])
        ctx.save_for_backward(q, k, v, g, d, Sc, ST)
        ctx.lib, ctx.L = lib, L
        return o, ST

    @staticmethod
    def backward(ctx, do, dST):
        q, k, v, g, d, Sc, ST = ctx.saved_tensors
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        do = do.contiguous()
        dST = None if dST is None else dST.contiguous()
        _, bwd = _kernels(ctx.lib, q.dtype)
        dq, dk = q.new_empty(B, T, H, K), q.new_empty(B, T, H, K)
        dv, dg, dS0 = torch.empty_like(v), torch.empty_like(g), v.new_empty(B, H, K, V)
        dd = None if d is None else torch.empty_like(d)
        native.run(bwd, [tuple(native.ptr(t) for t in (q, k, v, g, d, Sc, ST, dST, do, dq, dk, dv,
                                                       dg, dd, dS0))
                         + (T, G, H, K, V, ctx.L, *p) for p in native.rows(B * H)])
        if H != G:  # the heads of each group read the same q, k
            dq, dk = (t.view(B, T, G, H // G, K).sum(3) for t in (dq, dk))
        return None, dq, dk, dv, dg, dS0, dd


def ssd(lib, q, k, v, g, S0, d=None):
    """(o, S_T), with o_t += d_t v_t for d (B, T, H) given; `lib` = load()."""
    return _NativeSSD.apply(lib, q, k, v, g, S0, d)
