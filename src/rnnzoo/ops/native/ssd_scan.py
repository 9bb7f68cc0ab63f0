"""Mamba-2's SSD (scalar-decay linear attention, q and k shared by groups of heads) as its
recurrence in C (ssd_scan.c), forward and backward, the (K, V) state of one (batch row, head)
in cache and recomputed backward from every 32nd: O(T K V) work in a few vectorised passes a
step, where the chunked PyTorch form (ops.chunk.linear._ScalarChunk) runs (C, C) score
matrices and many (B, T, H, V) elementwise passes.

q, k: (B, T, G, K) (q already scaled); v: (B, T, H, V); g: (B, T, H) log-decays; S0:
(B, H, K, V); all one dtype (float32 or float64) on the CPU (`ops.backend.use_native`).
Returns o (B, T, H, V) and S_T, differentiable in all five. Threads split the (batch row,
head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native
from rnnzoo.ops.native.conv import _parts, _ptr

CK = 32  # the C file's checkpoint interval


def load():
    return native.load("ssd_scan")


def _kernels(lib, dtype):
    suffix = "f64" if dtype == torch.float64 else "f32"
    fwd, bwd = getattr(lib, f"ssd_fwd_{suffix}"), getattr(lib, f"ssd_bwd_{suffix}")
    if fwd.argtypes is None:
        P, L = ctypes.c_void_p, ctypes.c_long
        fwd.argtypes = [P] * 8 + [L] * 7
        bwd.argtypes = [P] * 12 + [L] * 7
        fwd.restype = bwd.restype = None
    return fwd, bwd


class _NativeSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, g, S0):
        q, k, v, g, S0 = (t.contiguous() for t in (q, k, v, g, S0))
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        nck = -(-T // CK)
        o, ST = torch.empty_like(v), torch.empty_like(S0)
        ck = S0.new_empty(B, H, nck, K, V)
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [(_ptr(q), _ptr(k), _ptr(v), _ptr(g), _ptr(S0), _ptr(o), _ptr(ST),
                          _ptr(ck), T, G, H, K, V, *p) for p in _parts(B * H)])
        ctx.save_for_backward(q, k, v, g, ck)
        ctx.lib = lib
        return o, ST

    @staticmethod
    def backward(ctx, do, dST):
        q, k, v, g, ck = ctx.saved_tensors
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        do = do.contiguous()
        dST = None if dST is None else dST.contiguous()
        dq, dk = q.new_empty(B, T, H, K), q.new_empty(B, T, H, K)
        dv, dg = torch.empty_like(v), torch.empty_like(g)
        dS0 = v.new_empty(B, H, K, V)
        _, bwd = _kernels(ctx.lib, q.dtype)
        native.run(bwd, [(_ptr(q), _ptr(k), _ptr(v), _ptr(g), _ptr(ck), _ptr(dST), _ptr(do),
                          _ptr(dq), _ptr(dk), _ptr(dv), _ptr(dg), _ptr(dS0), T, G, H, K, V, *p)
                         for p in _parts(B * H)])
        if H != G:  # the heads of each group read the same q, k
            dq, dk = (t.view(B, T, G, H // G, K).sum(3) for t in (dq, dk))
        return None, dq, dk, dv, dg, dS0


def ssd(lib, q, k, v, g, S0):
    """(o, S_T); `lib` = load()."""
    return _NativeSSD.apply(lib, q, k, v, g, S0)
