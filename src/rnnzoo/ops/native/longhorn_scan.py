"""Longhorn's diagonal scan on the CPU, fused in C (longhorn_scan.c): the same values as
`rnnzoo.layers.longhorn.longhorn_recurrence` in its other modes.

    eps_t = beta_t / (1 + beta_t |k_t|^2),   S_t = (1 - eps_t k_t^2) * S_{t-1} + (eps_t u_t) k_t^T,
    y_t = S_t q_t

u, beta: (batch, T, d_inner); k, q: (batch, T, d_state); S0: (batch, d_inner, d_state).
Returns y (batch, T, d_inner) and S_{T-1} (batch, d_inner, d_state), differentiable in u,
beta, k, q, S0. All float32 or all float64 on the CPU (`ops.backend.use_native` decides).

The (batch, T, d_inner, d_state) transitions and states are never written: the forward keeps
the state entering every chunk of `CHUNK` steps, the backward recomputes each chunk from it.
Work is split over torch.get_num_threads() threads by batch rows (native.rows).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native

CHUNK = 32  # steps between the stored states
_BLOCK = 16  # channels per block in the C code (DB)


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "longhorn_fwd", dtype, [P] * 8 + [L] * 6),
            native.kernel(lib, "longhorn_bwd", dtype, [P] * 12 + [L] * 6))


class _LonghornScan(first_order.Function):
    @staticmethod
    def forward(ctx, lib, u, beta, k, q, S0, plain):
        orig = (u, beta, k, q, S0)  # for `twice` (the copies below have no autograd history)
        u, beta, k, q, S0 = (t.contiguous() for t in (u, beta, k, q, S0))
        batch, T, D = u.shape
        N = k.shape[-1]
        fwd, _ = _kernels(lib, u.dtype)
        y, ST = torch.empty_like(u), torch.empty_like(S0)
        blocks = -(-D // _BLOCK) * N * _BLOCK
        ck = u.new_empty(batch, -(-T // CHUNK), blocks) if any(ctx.needs_input_grad) else None
        native.run(fwd, [(native.ptr(u), native.ptr(beta), native.ptr(k), native.ptr(q),
                          native.ptr(S0), native.ptr(y), native.ptr(ST), native.ptr(ck),
                          T, D, N, CHUNK, b0, b1) for b0, b1 in native.rows(batch)])
        if ck is not None:
            ctx.save_for_backward(u, beta, k, q, ck, *orig)
        ctx.lib, ctx.plain = lib, plain
        return y, ST

    @staticmethod
    def twice(ctx, dy, dST):  # under create_graph: autograd through the caller's plain form
        return (None, *first_order.replay(ctx.plain, ctx.saved_tensors[5:], (dy, dST),
                                          ctx.needs_input_grad[1:6]), None)

    @staticmethod
    def backward(ctx, dy, dST):
        u, beta, k, q, ck = ctx.saved_tensors[:5]
        batch, T, D = u.shape
        N = k.shape[-1]
        _, bwd = _kernels(ctx.lib, u.dtype)
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dST = None if dST is None else dST.contiguous()
        du, dbeta, dk, dq = (torch.empty_like(t) for t in (u, beta, k, q))
        dS0 = u.new_empty(batch, D, N)
        native.run(bwd, [(native.ptr(u), native.ptr(beta), native.ptr(k), native.ptr(q),
                          native.ptr(dy), native.ptr(dST), native.ptr(ck), native.ptr(du),
                          native.ptr(dbeta), native.ptr(dk), native.ptr(dq), native.ptr(dS0),
                          T, D, N, CHUNK, b0, b1) for b0, b1 in native.rows(batch)])
        return None, du, dbeta, dk, dq, dS0, None


def longhorn_scan(lib, u, beta, k, q, S0, plain=None):
    """(y (batch, T, d_inner), S_T (batch, d_inner, d_state)); `lib` = load(). plain(u, beta,
    k, q, S0) -> (y, S_T): the same scan in PyTorch (layers.longhorn's linear_scan form),
    which the node's `twice` differentiates under create_graph (None: it raises there)."""
    return _LonghornScan.apply(lib, u, beta, k, q, S0, plain)


def load():
    return native.load("longhorn_scan")
