"""The stabilised mLSTM recurrence on the CPU: its memory C is Mamba-2's SSD
(`ops.native.ssd_scan`, log-decay g_t = log f_t and key i_t k_t), and one C pass a step
(mlstm_scan.c) gives the max-stabiliser m, those g_t and i_t k_t, the normaliser n with
s_t = q_t . n_t, and q_t / den_t with den_t = max(|s_t|, exp(-m_t)) + eps, the query the SSD
reads (h_t = C_t^T q_t / den_t: the division rides on q, no (B, T, H, V) pass). Both C passes
carry their exact backward (the max-stabiliser's included, as autograd's through
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
from rnnzoo.ops.native import ssd_scan


def load():
    """mlstm_scan.c's library, None unless ssd_scan.c's builds too."""
    lib = native.load("mlstm_scan")
    return lib if lib is not None and ssd_scan.load() is not None else None


def _kernels(lib, dtype):
    P, L, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
    return (native.kernel(lib, "mlstm_gates_fwd", dtype, [P] * 13 + [D] + [L] * 5),
            native.kernel(lib, "mlstm_gates_bwd", dtype, [P] * 20 + [D] + [L] * 5))


class _Gates(torch.autograd.Function):
    """(q, k, li, lf, n0, m0) -> (g, kp, qs, n_T, m_T), the names of mlstm_scan.c."""

    @staticmethod
    def forward(ctx, lib, q, k, li, lf, n0, m0, eps):
        q, k, li, lf, n0, m0 = (t.contiguous() for t in (q, k, li, lf, n0, m0))
        B, T, H, K = q.shape
        g, m, s = (torch.empty_like(li) for _ in range(3))
        kp, qs = torch.empty_like(k), torch.empty_like(q)
        nT, mT = torch.empty_like(n0), torch.empty_like(m0)
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (q, k, li, lf, n0, m0, g, kp, qs, m, s, nT, mT))
                         + (eps, T, H, K, *p) for p in native.rows(B * H)])
        ctx.save_for_backward(q, k, li, lf, n0, m0, g, m, s)
        ctx.lib, ctx.eps = lib, eps
        return g, kp, qs, nT, mT

    @staticmethod
    def backward(ctx, dg, dkp, dqs, dnT, dmT):
        q, k, li, lf, n0, m0, g, m, s = ctx.saved_tensors
        B, T, H, K = q.shape
        dg, dkp, dqs, dnT, dmT = (t.contiguous() for t in (dg, dkp, dqs, dnT, dmT))
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dli, dlf, dn0, dm0 = (torch.empty_like(t) for t in (li, lf, n0, m0))
        _, bwd = _kernels(ctx.lib, q.dtype)
        native.run(bwd, [tuple(native.ptr(t) for t in (q, k, li, lf, n0, m0, g, m, s, dg, dkp, dqs,
                                                       dnT, dmT, dq, dk, dli, dlf, dn0, dm0))
                         + (ctx.eps, T, H, K, *p) for p in native.rows(B * H)])
        return None, dq, dk, dli, dlf, dn0, dm0, None


def mlstm(lib, q, k, v, log_i, log_f, state, eps):
    """(h, (C, n, m)); `lib` = load(); state = (C0, n0, m0)."""
    C0, n0, m0 = state
    g, kp, qs, nT, mT = _Gates.apply(lib, q, k, log_i, log_f, n0, m0, eps)
    h, CT = ssd_scan.ssd(ssd_scan.load(), qs, kp, v, g, C0)
    return h, (CT, nT, mT)
