"""The gated delta rule as its recurrence in C (delta_scan.c), forward and backward: the
(K, V) state of one (batch row, head) in cache, in tiles of 32 columns (wide.h), recomputed
backward from every 32nd, a few vectorised passes over it a step, where the chunked
PyTorch form (ops.chunk.delta) runs (C, C) products and a triangular solve per chunk, which cost more than the recurrence's
O(T K V) work on a CPU: fwd+bwd 1.5-2.1x slower at K = 32..128, B=16 T=512 and B=4 T=2048.

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = scale S_t^T q_t

q, k: (B, T, H, K); v: (B, T, H, V); beta, g: (B, T, H); S0: (B, H, K, V); all one dtype
(float32 or float64) on the CPU (`ops.backend.use_native`; ops.chunk.delta's delta_rule and
delta_product call it there; DeltaProduct's n Householder steps a token with n > 1: one
query and gate a token). Returns o (B, T, H, V) and S_T, differentiable in all six. The
forward takes one pass over the state a step, the backward two (the rebuild and one
fused pass). Threads split the (batch row, head) pairs. The caller handles
non-finite inputs (ops.finite), as ops.chunk.delta.delta_rule does around its solver.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native

CK = 32  # the C file's checkpoint interval


def flops(pairs: int, tokens: int, n: int, K: int, V: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of delta_fwd / delta_bwd over `pairs` (batch, head) pairs of
    `tokens` tokens of n steps each, 2 a multiply-add (as the counter books a product), per
    entry of the (K, V) state: forward w = S'^T k and S += k u^T a step, the read S^T q a
    token (2 n + 1); backward the rebuild's k u^T, dk's dS u + S' dw, dS' = dS + k dw^T and
    du = dS^T k a step (5 n), the read's q do^T and dq = S do and the gate's <dS', S'> a
    token (3), and one du a checkpoint block (its first step's, which the block before
    forms again). Booked while counting (ops.flop_count: delta_rule, so DeltaNet, Gated
    DeltaNet and MoM, and DeltaProduct's chunk mode take this path there, as the CPU timing
    does)."""
    kv, blocks = pairs * K * V, -(-tokens * n // CK)
    return 2 * kv * (2 * n + 1) * tokens, 2 * kv * ((5 * n + 3) * tokens + blocks)


def load():
    return native.load("delta_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    F = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "delta_fwd", dtype, [P] * 10 + [F] + [L] * 7),
            native.kernel(lib, "delta_bwd", dtype, [P] * 14 + [F] + [L] * 7))


class _NativeDelta(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, beta, g, S0, scale, n, plain):
        orig = (q, k, v, beta, g, S0)  # for `twice` (the copies below have no autograd history)
        q, k, v, beta, g, S0 = (t.contiguous() for t in (q, k, v, beta, g, S0))
        B, Tn, H, K = k.shape
        V = v.shape[-1]
        fwd, _ = _kernels(lib, q.dtype)
        o, d, ST = q.new_empty(B, Tn // n, H, V), torch.empty_like(v), torch.empty_like(S0)
        grad = any(ctx.needs_input_grad)
        ck = q.new_empty(B, H, -(-Tn // CK), K * native.tile_pad(V)) if grad else None
        native.run(fwd, [(native.ptr(q), native.ptr(k), native.ptr(v), native.ptr(beta),
                          native.ptr(g), native.ptr(S0), native.ptr(o), native.ptr(d),
                          native.ptr(ST), native.ptr(ck), scale, Tn, n, H, K, V, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, Tn // n, n, K, V)[0])
        if grad:
            ctx.save_for_backward(q, k, beta, g, d, ck, *orig)  # d = v - w: no v backward
        ctx.lib, ctx.scale, ctx.n, ctx.plain = lib, scale, n, plain
        return o, ST

    @staticmethod
    def twice(ctx, do, dST):  # under create_graph: autograd through the caller's plain form
        return (None, *first_order.replay(ctx.plain, ctx.saved_tensors[6:], (do, dST),
                                          ctx.needs_input_grad[1:7]), None, None, None)

    @staticmethod
    def backward(ctx, do, dST):
        q, k, beta, g, d, ck = ctx.saved_tensors[:6]
        B, Tn, H, K = k.shape
        V = d.shape[-1]
        _, bwd = _kernels(ctx.lib, q.dtype)
        do = d.new_zeros(B, Tn // ctx.n, H, V) if do is None else do.contiguous()
        dST = None if dST is None else dST.contiguous()
        dq, dk, dv, dbeta, dg = (torch.empty_like(t) for t in (q, k, d, beta, g))
        dS0 = q.new_empty(B, H, K, V)
        native.run(bwd, [(native.ptr(q), native.ptr(k), native.ptr(beta),
                          native.ptr(g), native.ptr(d), native.ptr(ck), native.ptr(dST),
                          native.ptr(do), native.ptr(dq), native.ptr(dk), native.ptr(dv),
                          native.ptr(dbeta), native.ptr(dg), native.ptr(dS0), ctx.scale,
                          Tn, ctx.n, H, K, V, p0, p1) for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, Tn // ctx.n, ctx.n, K, V)[1])
        return None, dq, dk, dv, dbeta, dg, dS0, None, None, None


def delta(lib, q, k, v, beta, g, S0, scale, n=1, plain=None):
    """(o (B, T / n, H, V), S_T (B, H, K, V)); `lib` = load(). n > 1: n steps a token
    (DeltaProduct), q (B, T / n, H, K) read after a token's last step and g (B, T / n, H)
    applied at its first; T a multiple of n. plain(q, k, v, beta, g, S0) -> (o, S_T): the
    same op in PyTorch (the caller's chunk form, ops.chunk.delta), which the node's `twice`
    differentiates under create_graph (None: it raises there)."""
    return _NativeDelta.apply(lib, q, k, v, beta, g, S0, scale, n, plain)
