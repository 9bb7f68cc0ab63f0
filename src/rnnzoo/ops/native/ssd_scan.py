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

from rnnzoo.ops import first_order, flop_count, native


def load():
    """(ssd_scan.c's library, ssd_chunk.c's), None unless both build."""
    libs = native.load("ssd_scan"), native.load("ssd_chunk")
    return None if None in libs else libs


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib[0], "ssd_fwd", dtype, [P] * 9 + [L] * 9),
            native.kernel(lib[1], "ssd_bwd_chunk", dtype, [P] * 15 + [L] * 9))


# the backward's chunk length (ssd_bwd_chunk); the forward stores each chunk's start state
# (mamba3's K = 128, V = 64, backward alone, 1 thread: 32 53 ms, 48 54, 64 55; the recurrent
# backward it replaced 63)
CHUNK = 32
TILE = 16  # ssd_chunk.c's SSD_TR: the causal (n, n) products' row tiles


def flops(pairs: int, tokens: int, K: int, V: int, L: int = CHUNK,
          last: bool = True) -> tuple[int, int]:
    """(forward, backward) FLOPs of ssd_fwd / ssd_bwd_chunk over `pairs` (batch, head) pairs
    of `tokens` steps, 2 a multiply-add (as the counter books a product); the products only,
    not the decay scalings nor the same-step d_t v_t (V a step). Forward a step, per (K, V)
    state entry: S += k (c v) and o += q S (2). Backward a chunk of n steps: dq = dO S^T,
    dk = V dS^T, dv = K dS and dS += Q^T dO (4 n K V), and in causal row tiles of TILE rows
    [i0, i1) (m = i1 - i0 rows; the tile's zeros above the diagonal multiplied too): P = dO V^T
    and A = Q K^T over columns [0, i1) (m i1 (V + K)), dq += P K (m i1 K), dk += P^T Q and
    dv += A^T dO over rows [i0, n) (m (n - i0) (K + V)); with `last` (dS_T given) <dS_T, S_T>
    once. Booked while counting (ops.flop_count: Mamba-2, Mamba-3, RetNet, linear and
    lightning attention, and mLSTM's memory (ops.native.mlstm_scan) take this path there, as
    the CPU timing does)."""
    bwd = K * V if last and tokens else 0
    for t0 in range(0, tokens, L):
        n = min(L, tokens - t0)
        bwd += 4 * n * K * V
        for i0 in range(0, n, TILE):
            i1 = min(i0 + TILE, n)
            bwd += (i1 - i0) * (i1 * (V + 2 * K) + (n - i0) * (K + V))
    return 2 * pairs * K * V * 2 * tokens, 2 * pairs * bwd


def _rows(v):
    """The stride of v's (B, T) rows where the kernels read v (B, T, H, V) in place (rows of
    contiguous heads, one stride apart: a slice of wider rows, mamba3's x from in_proj's
    output, ~1.4-2.3 ms of copy at the #17 size), else None. Size-1 dimensions' strides are
    free."""
    B, T, H, V = v.shape
    s = v.stride()
    vr = s[1] if T > 1 else s[0] if B > 1 else H * V
    ok = (s[3] == 1 or V == 1) and (s[2] == V or H == 1) and vr >= H * V and \
        (B == 1 or s[0] == T * vr)
    return vr if ok else None


class _NativeSSD(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, g, S0, d, plain):
        orig = (q, k, v, g, S0, d)  # for `twice` (the copies below have no autograd history)
        q, k, g, S0 = (t.contiguous() for t in (q, k, g, S0))
        d = None if d is None else d.contiguous()
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        vr = _rows(v)
        v, vr = (v, vr) if vr else (v.contiguous(), H * V)
        L = CHUNK
        o, ST = v.new_empty(v.shape), torch.empty_like(S0)
        # the chunks' start states (B, H, ceil(T / L), K, V) for the backward, if one will run
        Sc = S0.new_empty(B, H, -(-T // L), K, V) if any(ctx.needs_input_grad) else None
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (q, k, v, g, d, S0, o, ST, Sc))
                         + (L, T, G, H, K, V, vr, *p) for p in native.rows(B * H)])
        flop_count.add(flops(B * H, T, K, V, L)[0])
        ctx.save_for_backward(q, k, v, g, d, Sc, ST, *orig)
        ctx.lib, ctx.L, ctx.vr, ctx.plain = lib, L, vr, plain
        ctx.set_materialize_grads(False)  # an unread S_T: dST NULL, not a zero tensor
        return o, ST

    @staticmethod
    def twice(ctx, do, dST):
        first_order.plain_given(ctx.plain, "_NativeSSD")
        return (None, *first_order.replay(ctx.plain, ctx.saved_tensors[7:], (do, dST),
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, do, dST):
        q, k, v, g, d, Sc, ST = ctx.saved_tensors[:7]
        B, T, G, K = q.shape
        H, V = v.shape[2:]
        do = v.new_zeros(v.shape) if do is None else do.contiguous()
        dST = None if dST is None else dST.contiguous()
        _, bwd = _kernels(ctx.lib, q.dtype)
        dq, dk = q.new_empty(B, T, H, K), q.new_empty(B, T, H, K)
        dv, dg, dS0 = v.new_empty(v.shape), torch.empty_like(g), v.new_empty(B, H, K, V)
        dd = None if d is None else torch.empty_like(d)
        native.run(bwd, [tuple(native.ptr(t) for t in (q, k, v, g, d, Sc, ST, dST, do, dq, dk, dv,
                                                       dg, dd, dS0))
                         + (T, G, H, K, V, ctx.vr, ctx.L, *p)
                         for p in native.rows(B * H)])
        flop_count.add(flops(B * H, T, K, V, ctx.L, dST is not None)[1])
        if H != G:  # the heads of each group read the same q, k
            dq, dk = (t.view(B, T, G, H // G, K).sum(3) for t in (dq, dk))
        return None, dq, dk, dv, dg, dS0, dd, None


def ssd(lib, q, k, v, g, S0, d=None, plain=None):
    """(o, S_T), with o_t += d_t v_t for d (B, T, H) given; `lib` = load(). plain(q, k, v, g,
    S0, d) -> (o, S_T): the same in PyTorch (ops.chunk.linear's loop), which the node's
    `twice` differentiates (None: create_graph=True through it raises)."""
    return _NativeSSD.apply(lib, q, k, v, g, S0, d, plain)
