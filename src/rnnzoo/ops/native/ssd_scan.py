"""Mamba-2's SSD (scalar-decay linear attention, q and k shared by groups of heads) as its
recurrence in C (ssd_scan.c), forward and backward, the (K, V) state of one (batch row, head)
in cache; the backward runs the forward again on the transposed state (for dq) and the
state's gradient back (for dk, dv), and takes the decays' gradients from q . dq - k . dk: O(T K V) work in a few
vectorised passes a step, where the chunked PyTorch form (ops.chunk.linear._ScalarChunk)
runs (C, C) score matrices and many (B, T, H, V) elementwise passes.

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
    return native.load("ssd_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "ssd_fwd", dtype, [P] * 7 + [L] * 7),
            native.kernel(lib, "ssd_bwd", dtype, [P] * 12 + [L] * 7))


class _NativeSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, g, S0):
        q, k, v, g, S0 = (t.contiguous() for t in (q, k, v, g, S0))
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        o, ST = torch.empty_like(v), torch.empty_like(S0)
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [(native.ptr(q), native.ptr(k), native.ptr(v), native.ptr(g), native.ptr(S0), native.ptr(o), native.ptr(ST),
                          T, G, H, K, V, *p) for p in native.rows(B * H)])
        ctx.save_for_backward(q, k, v, g, S0, ST)
        ctx.lib = lib
        return o, ST

    @staticmethod
    def backward(ctx, do, dST):
        q, k, v, g, S0, ST = ctx.saved_tensors
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        do = do.contiguous()
        dST = None if dST is None else dST.contiguous()
        fwd, bwd = _kernels(ctx.lib, q.dtype)
        # dq_t = S_t do_t: the forward on the transposed state, S^T_t = a_t S^T_{t-1} + v_t k_t^T
        # read by do_t (q, k, v = do, v, k per head, from S_0^T)
        kh = k if G == H else k.repeat_interleave(H // G, 2)
        S0t = S0.transpose(-1, -2).contiguous()
        dq, STt = q.new_empty(B, T, H, K), torch.empty_like(S0t)
        native.run(fwd, [(native.ptr(do), native.ptr(v), native.ptr(kh), native.ptr(g), native.ptr(S0t), native.ptr(dq),
                          native.ptr(STt), T, H, H, V, K, *p) for p in native.rows(B * H)])
        dk, dv, dg = q.new_empty(B, T, H, K), torch.empty_like(v), torch.empty_like(g)
        dS0 = v.new_empty(B, H, K, V)
        native.run(bwd, [(native.ptr(q), native.ptr(k), native.ptr(v), native.ptr(g), native.ptr(ST), native.ptr(dST), native.ptr(do),
                          native.ptr(dq), native.ptr(dk), native.ptr(dv), native.ptr(dg), native.ptr(dS0), T, G, H, K, V, *p)
                         for p in native.rows(B * H)])
        if H != G:  # the heads of each group read the same q, k
            dq, dk = (t.view(B, T, G, H // G, K).sum(3) for t in (dq, dk))
        return None, dq, dk, dv, dg, dS0


def ssd(lib, q, k, v, g, S0):
    """(o, S_T); `lib` = load()."""
    return _NativeSSD.apply(lib, q, k, v, g, S0)
