"""The stabilised mLSTM recurrence in C (mlstm_scan.c), forward and backward, the (K, V)
memory of one (batch row, head) in cache and recomputed backward from every 32nd step; the
backward is the exact chain rule through the max-stabiliser m (as autograd's through
`ops.chunk.linear.mlstm_recurrent`), so state gradients (C, n, m) pass both ways.

q (already scaled), k: (B, T, H, K); v: (B, T, H, V); log_i, log_f: (B, T, H); the state
(C (B, H, K, V), n (B, H, K), m (B, H)); all one dtype (float32 or float64) on the CPU
(`ops.backend.use_native`). Returns h (B, T, H, V) and (C, n, m) at T, differentiable in
everything. Threads split the (batch row, head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native

CK = 32  # the C file's checkpoint interval


def load():
    return native.load("mlstm_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    real = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "mlstm_fwd", dtype, [P] * 15 + [real] + [L] * 6),
            native.kernel(lib, "mlstm_bwd", dtype, [P] * 22 + [real] + [L] * 6))


class _NativeMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, eps, q, k, v, li, lf, C0, n0, m0):
        q, k, v, li, lf, C0, n0, m0 = (t.contiguous() for t in (q, k, v, li, lf, C0, n0, m0))
        B, T, H, K = q.shape
        V = v.shape[-1]
        h, CT, nT, mT = torch.empty_like(v), torch.empty_like(C0), torch.empty_like(n0), \
            torch.empty_like(m0)
        s, m = torch.empty_like(li), torch.empty_like(li)
        ck = q.new_empty(B, H, -(-T // CK), K * V + K)
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (q, k, v, li, lf, C0, n0, m0, h, CT, nT, mT, s,
                                                 m, ck)) + (eps, T, H, K, V, *p)
                         for p in native.rows(B * H)])
        ctx.save_for_backward(q, k, v, li, lf, m0, h, s, m, ck)
        ctx.lib, ctx.eps = lib, eps
        return h, CT, nT, mT

    @staticmethod
    def backward(ctx, dh, dCT, dnT, dmT):
        q, k, v, li, lf, m0, h, s, m, ck = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dCT, dnT, dmT = (None if t is None else t.contiguous() for t in (dCT, dnT, dmT))
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dli, dlf = torch.empty_like(li), torch.empty_like(lf)
        dC0, dn0, dm0 = v.new_empty(B, H, K, V), v.new_empty(B, H, K), v.new_empty(B, H)
        _, bwd = _kernels(ctx.lib, q.dtype)
        native.run(bwd, [tuple(native.ptr(t) for t in (q, k, v, li, lf, m0, h, s, m, ck, dh, dCT, dnT,
                                                 dmT, dq, dk, dv, dli, dlf, dC0, dn0, dm0))
                         + (ctx.eps, T, H, K, V, *p) for p in native.rows(B * H)])
        return None, None, dq, dk, dv, dli, dlf, dC0, dn0, dm0


def mlstm(lib, q, k, v, log_i, log_f, state, eps):
    """(h, (C, n, m)); `lib` = load(); state = (C0, n0, m0)."""
    h, C, n, m = _NativeMLSTM.apply(lib, eps, q, k, v, log_i, log_f, *state)
    return h, (C, n, m)
