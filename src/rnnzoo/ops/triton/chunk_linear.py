"""Chunkwise gated linear attention in Triton, forward and backward.

The same op as `rnnzoo.ops.chunk.linear.gated_linear_attention` (same signature, same
returns): per head, with q~ = scale * q and g = log decay <= 0 (absent, a scalar per head
or a vector per key channel),

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,      o_t = S_t^T q~_t

or, with the RWKV-6 bonus u, o_t = (S_{t-1} + diag(u) k_t v_t^T)^T q~_t before the update.

Kernel layout: one program per (batch * head, block of BV value channels). It walks the
chunks of C steps in order with the (K, BV) state S in registers. In a chunk, with G the
inclusive cumulative log-decay from the chunk start (Gq = G, or G - g with a bonus, because
q then reads the state before the current decay) and Gend = G at the chunk's last step:

    o      = (Q K^T o D) V + (Q o e^{Gq}) S_0 [+ (q~_i . (u o k_i)) v_i]
    S_end  = e^{Gend} S_0 + (K o e^{Gend - G})^T V

with D_ij = e^{Gq_i - G_j} on j <= i (j < i with a bonus). Scalar decays build D in log
space, masked before the exp. Vector decays factor D through the chunk start,
(q_i e^{Gq_i}) . (k_j e^{-G_j}), while the chunk's log-decay span stays below
`_FACTOR_LIMIT` (both factors then far from overflow and underflow in float32); a chunk
with a steeper decay is built exactly, one column at a time from the (C, K) log-space
factors e^{min(Gq_i - G_j, 0)} (O(C^2 K) elementwise work, no tensor cores) -- the same
bound the PyTorch op keeps with its sub-chunks.

The forward stores the state entering each chunk, (B, H, N, K, V) float32, when a gradient
is needed. The backward walks the chunks in reverse with dS = dL/dS_end:

    dV      = (Q K^T o D)^T dO + (K o e^{Gend - G}) dS [+ c o dO]
    dQ~     = ((dO V^T) o D) K + (dO S_0^T) o e^{Gq}            (vector D: the factored form)
    dK      = ((dO V^T) o D)^T Q~ + (V dS^T) o e^{Gend - G}
    dS_prev = (Q~ o e^{Gq})^T dO + e^{Gend} dS

and the log-decay gradient from dG = dL/dG (each factor x e^{+-G} contributes +-x dx),
dg_t = sum_{s >= t} dG_s (+ dL/dGend for every step of the chunk, - dL/dGq_t with a
bonus). Programs over different value blocks write partial dq, dk, dg, du, summed after.

Accumulation is float32 throughout (float64 inputs are not supported: use the PyTorch op);
outputs come back in q's dtype and the final state in float32. Matrix products run with
`input_precision="ieee"` for float32 inputs and "tf32" for half-precision inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnzoo.ops import first_order
from rnnzoo.ops import triton as _triton
from rnnzoo.ops.finite import finite_inputs, poison
from rnnzoo.ops.triton._tiles import head_tile as _head_tile
from rnnzoo.ops.triton._tiles import load_rows as _load_rows
from rnnzoo.ops.triton._tiles import load_state as _load_state

__all__ = ["gated_linear_attention"]

_FACTOR_LIMIT = 40.0  # log-decay span of a chunk up to which vector decays are factorised


@triton.jit
def _vector_intra(q, k, Gq, G, Gend, g_base, k_base, t0, T, HK, offs_c, offs_k, K,
                  BONUS: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                  PREC: tl.constexpr):
    """Intra-chunk scores A_ij = sum_k q_ik e^{Gq_ik - G_jk} k_jk (j <= i, or j < i with a
    bonus), factorised through the chunk start when the span allows, else built exactly
    one column at a time."""
    if BONUS:
        causal = offs_c[:, None] > offs_c[None, :]
    else:
        causal = offs_c[:, None] >= offs_c[None, :]
    if -tl.min(Gend, 0) < 40.0:  # the span; 40.0 is _FACTOR_LIMIT
        qf = q * tl.exp(Gq)
        kf = k * tl.exp(-G)
        A = tl.dot(qf, tl.trans(kf), input_precision=PREC)
        A = tl.where(causal, A, 0.0)
    else:
        A = tl.zeros((C, C), dtype=tl.float32)
        Gj = tl.zeros((BK,), dtype=tl.float32)
        for j in range(C):
            mj = (offs_k < K) & (offs_k * 0 + t0 + j < T)
            Gj += tl.load(g_base + (t0 + j) * HK + offs_k, mask=mj, other=0.0).to(tl.float32)
            kj = tl.load(k_base + (t0 + j) * HK + offs_k, mask=mj, other=0.0).to(tl.float32)
            w = tl.exp(tl.minimum(Gq - Gj[None, :], 0.0))
            col = tl.sum(q * kj[None, :] * w, 1)
            if BONUS:
                col = tl.where(offs_c > j, col, 0.0)
            else:
                col = tl.where(offs_c >= j, col, 0.0)
            A = tl.where(offs_c[None, :] == j, col[:, None], A)
    return A


@triton.jit
def _gla_fwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, u_ptr, h0_ptr, o_ptr, ht_ptr, states_ptr,
                    T, H, K, V, N, scale,
                    DECAY: tl.constexpr, BONUS: tl.constexpr, HAS_H0: tl.constexpr,
                    STORE: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                    BV: tl.constexpr, PREC: tl.constexpr):
    pid_v, pid_bh, b, h, offs_k, offs_bv, nv, row_k, row_v, kv_offs, kv_mask = (
        _head_tile(T, H, K, V, BK, BV))
    offs_c = tl.arange(0, C)
    HK = H * K
    HV = H * V
    q_base = q_ptr + row_k
    k_base = k_ptr + row_k
    v_base = v_ptr + row_v
    o_base = o_ptr + row_v
    S = _load_state(h0_ptr, pid_bh, K, V, kv_offs, kv_mask, HAS_H0, BK, BV)
    if BONUS:
        u = tl.load(u_ptr + h * K + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        causal = offs_c[:, None] > offs_c[None, :]
    else:
        causal = offs_c[:, None] >= offs_c[None, :]
    for n in range(N):
        t0 = n * C
        t = t0 + offs_c
        q = _load_rows(q_base, t, T, HK, offs_k, K) * scale
        k = _load_rows(k_base, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, tl.arange(0, BV), nv)
        if DECAY == 0:
            A = tl.where(causal, tl.dot(q, tl.trans(k), input_precision=PREC), 0.0)
            qi = q
            kst = k
            o = tl.dot(A, v, input_precision=PREC) + tl.dot(qi, S, input_precision=PREC)
        elif DECAY == 1:
            g = tl.load(g_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
            G = tl.cumsum(g, 0)
            if BONUS:
                Gq = G - g
            else:
                Gq = G
            Gend = tl.sum(g, 0)
            D = tl.exp(tl.where(causal, Gq[:, None] - G[None, :], float("-inf")))
            A = tl.dot(q, tl.trans(k), input_precision=PREC) * D
            qi = q * tl.exp(Gq)[:, None]
            kst = k * tl.exp(Gend - G)[:, None]
            o = tl.dot(A, v, input_precision=PREC) + tl.dot(qi, S, input_precision=PREC)
        else:
            g = _load_rows(g_ptr + b * T * HK + h * K, t, T, HK, offs_k, K)
            G = tl.cumsum(g, 0)
            if BONUS:
                Gq = G - g
            else:
                Gq = G
            Gend = tl.sum(g, 0)
            A = _vector_intra(q, k, Gq, G, Gend, g_ptr + b * T * HK + h * K, k_base, t0, T, HK,
                              offs_c, offs_k, K, BONUS, C, BK, PREC)
            qi = q * tl.exp(Gq)
            kst = k * tl.exp(Gend[None, :] - G)
            o = tl.dot(A, v, input_precision=PREC) + tl.dot(qi, S, input_precision=PREC)
        if BONUS:
            o += tl.sum(q * u[None, :] * k, 1)[:, None] * v
        o_mask = (t[:, None] < T) & (tl.arange(0, BV)[None, :] < nv)
        tl.store(o_base + t[:, None] * HV + tl.arange(0, BV)[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=o_mask)
        if STORE:
            tl.store(states_ptr + (pid_bh * N + n) * K * V + kv_offs, S, mask=kv_mask)
        upd = tl.dot(tl.trans(kst), v, input_precision=PREC)
        if DECAY == 0:
            S = S + upd
        elif DECAY == 1:
            S = S * tl.exp(Gend) + upd
        else:
            S = S * tl.exp(Gend)[:, None] + upd
    tl.store(ht_ptr + pid_bh * K * V + kv_offs, S, mask=kv_mask)


@triton.jit
def _gla_bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, u_ptr, states_ptr, do_ptr, dht_ptr,
                    dq_ptr, dk_ptr, dv_ptr, dg_ptr, du_ptr, dh0_ptr,
                    T, H, K, V, N, B, scale,
                    DECAY: tl.constexpr, BONUS: tl.constexpr, HAS_DHT: tl.constexpr,
                    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    PREC: tl.constexpr):
    pid_v, pid_bh, b, h, offs_k, offs_bv, nv, row_k, row_v, kv_offs, kv_mask = (
        _head_tile(T, H, K, V, BK, BV))
    offs_c = tl.arange(0, C)
    HK = H * K
    HV = H * V
    q_base = q_ptr + row_k
    k_base = k_ptr + row_k
    v_base = v_ptr + row_v
    do_base = do_ptr + row_v
    dv_base = dv_ptr + row_v
    # partial (per value block) gradients: buffers with a leading NV dimension
    part = pid_v * B * T
    dq_base = dq_ptr + (part + b * T) * HK + h * K
    dk_base = dk_ptr + (part + b * T) * HK + h * K
    dS = _load_state(dht_ptr, pid_bh, K, V, kv_offs, kv_mask, HAS_DHT, BK, BV)
    if BONUS:
        u = tl.load(u_ptr + h * K + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        du = tl.zeros((BK,), dtype=tl.float32)
        causal = offs_c[:, None] > offs_c[None, :]
    else:
        causal = offs_c[:, None] >= offs_c[None, :]
    for i in range(N):
        n = N - 1 - i
        t0 = n * C
        t = t0 + offs_c
        row_mask_k = (t[:, None] < T) & (offs_k[None, :] < K)
        q = _load_rows(q_base, t, T, HK, offs_k, K) * scale
        k = _load_rows(k_base, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, offs_bv, nv)
        do = _load_rows(do_base, t, T, HV, offs_bv, nv)
        S0 = tl.load(states_ptr + (pid_bh * N + n) * K * V + kv_offs, mask=kv_mask, other=0.0)
        dA = tl.where(causal, tl.dot(do, tl.trans(v), input_precision=PREC), 0.0)
        dqi = tl.dot(do, tl.trans(S0), input_precision=PREC)     # dL/d(q~ e^{Gq})
        dkst = tl.dot(v, tl.trans(dS), input_precision=PREC)     # dL/d(k e^{Gend - G})
        if DECAY == 0:
            A = tl.where(causal, tl.dot(q, tl.trans(k), input_precision=PREC), 0.0)
            dq = tl.dot(dA, k, input_precision=PREC) + dqi
            dk = tl.dot(tl.trans(dA), q, input_precision=PREC) + dkst
            kst = k
            qi = q
            dS_prev = dS
        elif DECAY == 1:
            g = tl.load(g_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
            G = tl.cumsum(g, 0)
            if BONUS:
                Gq = G - g
            else:
                Gq = G
            Gend = tl.sum(g, 0)
            D = tl.exp(tl.where(causal, Gq[:, None] - G[None, :], float("-inf")))
            A = tl.dot(q, tl.trans(k), input_precision=PREC) * D
            dAD = dA * D
            eq = tl.exp(Gq)
            ek = tl.exp(Gend - G)
            qi = q * eq[:, None]
            kst = k * ek[:, None]
            dq = tl.dot(dAD, k, input_precision=PREC) + dqi * eq[:, None]
            dk = tl.dot(tl.trans(dAD), q, input_precision=PREC) + dkst * ek[:, None]
            dAA = dA * A
            qi_d = tl.sum(dqi * qi, 1)
            kst_d = tl.sum(dkst * kst, 1)
            dGq = tl.sum(dAA, 1) + qi_d
            dG = -tl.sum(dAA, 0) - kst_d
            dGend = tl.sum(kst_d, 0) + tl.exp(Gend) * tl.sum(tl.sum(S0 * dS, 1), 0)
            dS_prev = dS * tl.exp(Gend)
        else:
            g_base = g_ptr + b * T * HK + h * K
            g = _load_rows(g_base, t, T, HK, offs_k, K)
            G = tl.cumsum(g, 0)
            if BONUS:
                Gq = G - g
            else:
                Gq = G
            Gend = tl.sum(g, 0)
            if -tl.min(Gend, 0) < 40.0:  # _FACTOR_LIMIT, as in _vector_intra
                eGq = tl.exp(Gq)
                emG = tl.exp(-G)
                qf = q * eGq
                kf = k * emG
                A = tl.where(causal, tl.dot(qf, tl.trans(kf), input_precision=PREC), 0.0)
                dq_in = tl.dot(dA, kf, input_precision=PREC) * eGq
                dk_in = tl.dot(tl.trans(dA), qf, input_precision=PREC) * emG
            else:
                A = tl.zeros((C, C), dtype=tl.float32)
                dq_in = tl.zeros((C, BK), dtype=tl.float32)
                dk_in = tl.zeros((C, BK), dtype=tl.float32)
                Gj = tl.zeros((BK,), dtype=tl.float32)
                for j in range(C):
                    mj = (offs_k < K) & (offs_k * 0 + t0 + j < T)
                    Gj += tl.load(g_base + (t0 + j) * HK + offs_k, mask=mj,
                                  other=0.0).to(tl.float32)
                    kj = tl.load(k_base + (t0 + j) * HK + offs_k, mask=mj,
                                 other=0.0).to(tl.float32)
                    vj = tl.load(v_base + (t0 + j) * HV + offs_bv,
                                 mask=(offs_bv < nv) & (offs_bv * 0 + t0 + j < T), other=0.0).to(tl.float32)
                    if BONUS:
                        rows = offs_c > j
                    else:
                        rows = offs_c >= j
                    w = tl.where(rows[:, None], tl.exp(tl.minimum(Gq - Gj[None, :], 0.0)), 0.0)
                    col = tl.sum(q * kj[None, :] * w, 1)
                    A = tl.where(offs_c[None, :] == j, col[:, None], A)
                    dcol = tl.sum(do * vj[None, :], 1)                    # dA[:, j]
                    dq_in += dcol[:, None] * kj[None, :] * w
                    dk_row = tl.sum(dcol[:, None] * q * w, 0)
                    dk_in = tl.where(offs_c[:, None] == j, dk_row[None, :], dk_in)
            eq = tl.exp(Gq)
            ek = tl.exp(Gend[None, :] - G)
            qi = q * eq
            kst = k * ek
            dq = dq_in + dqi * eq
            dk = dk_in + dkst * ek
            dGq = q * dq_in + dqi * qi
            dG = -k * dk_in - dkst * kst
            dGend = tl.sum(dkst * kst, 0) + tl.exp(Gend) * tl.sum(S0 * dS, 1)
            dS_prev = dS * tl.exp(Gend)[:, None]
        dv = tl.dot(tl.trans(A), do, input_precision=PREC) + tl.dot(kst, dS, input_precision=PREC)
        if BONUS:
            c = tl.sum(q * u[None, :] * k, 1)
            dc = tl.sum(do * v, 1)
            dv += c[:, None] * do
            dq += dc[:, None] * u[None, :] * k
            dk += dc[:, None] * u[None, :] * q
            du += tl.sum(dc[:, None] * q * k, 0)
        if DECAY == 1:
            dg = tl.cumsum(dG + dGq, 0, reverse=True) + dGend
            if BONUS:
                dg -= dGq
            tl.store(dg_ptr + (part + b * T + t) * H + h, dg, mask=t < T)
        elif DECAY == 2:
            dg = tl.cumsum(dG + dGq, 0, reverse=True) + dGend[None, :]
            if BONUS:
                dg -= dGq
            tl.store(dg_ptr + (part + b * T) * HK + h * K + t[:, None] * HK + offs_k[None, :],
                     dg, mask=row_mask_k)
        tl.store(dq_base + t[:, None] * HK + offs_k[None, :], dq * scale, mask=row_mask_k)
        tl.store(dk_base + t[:, None] * HK + offs_k[None, :], dk, mask=row_mask_k)
        tl.store(dv_base + t[:, None] * HV + offs_bv[None, :], dv,
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        dS = dS_prev + tl.dot(tl.trans(qi), do, input_precision=PREC)
    tl.store(dh0_ptr + pid_bh * K * V + kv_offs, dS, mask=kv_mask)
    if BONUS:
        tl.store(du_ptr + (pid_v * B + b) * HK + h * K + offs_k, du, mask=offs_k < K)


def _config(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    """(C, BK, BV): chunk length and tile widths, fixed by head size (no autotuning).
    C is the largest power of two <= chunk_size, clamped to [16, 64] (32 for K > 64)."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    c_max = 64 if BK <= 64 else 32
    C = 16
    while C * 2 <= min(chunk_size, c_max):
        C *= 2
    return C, BK, BV


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


class _GLA(first_order.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, bonus, h0, scale, chunk_size, plain):
        B, T, H, K = q.shape
        V = v.shape[-1]
        C, BK, BV = _config(K, V, chunk_size)
        N = triton.cdiv(T, C)
        NV = triton.cdiv(V, BV)
        decay = 0 if g is None else (1 if g.dim() == 3 else 2)
        needs_grad = any(ctx.needs_input_grad[:6])
        o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
        ht = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
        states = (torch.empty(B, H, N, K, V, dtype=torch.float32, device=q.device)
                  if needs_grad else ht)
        prec = _precision(q.dtype)
        _gla_fwd_kernel[(NV, B * H)](
            q, k, v, g if g is not None else q, bonus if bonus is not None else q,
            h0 if h0 is not None else q, o, ht, states, T, H, K, V, N, scale,
            DECAY=decay, BONUS=bonus is not None, HAS_H0=h0 is not None, STORE=needs_grad,
            C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        if needs_grad:
            ctx.save_for_backward(q, k, v, g, bonus, h0, states)
            ctx.meta = (scale, C, BK, BV, decay, prec)
        ctx.plain = plain
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def twice(ctx, do, dht):  # under create_graph: autograd through the caller's PyTorch form
        plain, scale = ctx.plain, ctx.meta[0]

        def fn(q, k, v, g, bonus, h0):
            return plain(q, k, v, g, scale=scale, initial_state=h0, bonus=bonus)
        return (*_triton.replay("_GLA", plain, fn, ctx.saved_tensors[:6], (do, dht),
                                ctx.needs_input_grad[:6]), None, None, None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, bonus, h0, states = ctx.saved_tensors
        scale, C, BK, BV, decay, prec = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = triton.cdiv(T, C)
        NV = triton.cdiv(V, BV)
        f32 = dict(dtype=torch.float32, device=q.device)
        do = torch.zeros(B, T, H, V, **f32) if do is None else do.contiguous()
        dq = torch.empty(NV, B, T, H, K, **f32)
        dk = torch.empty(NV, B, T, H, K, **f32)
        dv = torch.empty(B, T, H, V, **f32)
        dg = torch.empty(NV, *g.shape, **f32) if g is not None else dv
        du = torch.empty(NV, B, H, K, **f32) if bonus is not None else dv
        dh0 = torch.empty(B, H, K, V, **f32)
        _gla_bwd_kernel[(NV, B * H)](
            q, k, v, g if g is not None else q, bonus if bonus is not None else q, states,
            do, dht.contiguous() if dht is not None else q, dq, dk, dv, dg, du, dh0,
            T, H, K, V, N, B, scale,
            DECAY=decay, BONUS=bonus is not None, HAS_DHT=dht is not None,
            C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        return (dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv.to(v.dtype),
                dg.sum(0).to(g.dtype) if g is not None else None,
                du.sum((0, 1)).to(bonus.dtype) if bonus is not None else None,
                dh0.to(h0.dtype) if h0 is not None else None, None, None, None)


def gated_linear_attention(q, k, v, log_decay=None, *, scale=None, initial_state=None,
                           bonus=None, chunk_size: int = 64, subchunk_size: int = 16, plain=None):
    """Chunkwise gated linear attention on Triton; arguments and returns as
    `rnnzoo.ops.chunk.linear.gated_linear_attention`.

    q, k: (B, T, H, K); v: (B, T, H, V); log_decay: None, (B, T, H) or (B, T, H, K), <= 0;
    scale: default K^-0.5; initial_state: (B, H, K, V) or None; bonus: (H, K) or None.
    Returns o (B, T, H, V) in q's dtype and the final state (B, H, K, V) in float32.
    chunk_size picks the kernel's chunk (a power of two in [16, 64]); subchunk_size is
    accepted for signature compatibility and unused (see the module docstring).
    plain: the op's PyTorch form (same arguments and returns), replayed by the node's `twice`
    under create_graph=True; None: create_graph raises (the package docstring).
    """
    from rnnzoo.ops.chunk._common import check_linear as _check
    _check(q, k, v, log_decay, initial_state, bonus)
    if q.dtype == torch.float64:
        raise TypeError("triton gated_linear_attention: float64 is not supported, "
                        "use rnnzoo.ops.chunk.linear.gated_linear_attention")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    c = lambda x: None if x is None else x.contiguous()  # noqa: E731
    (q,), (k, v, log_decay), marks = finite_inputs((q,), (k, v, log_decay))  # see ops.finite
    o, S = _GLA.apply(c(q), c(k), c(v), c(log_decay), c(bonus), c(initial_state), scale,
                      chunk_size, plain)
    return poison(o, marks.outputs), poison(S, marks.state)
