"""The gated delta rule, chunkwise in WY/UT form, forward and backward in Triton.

The same op as `rnnzoo.ops.chunk.delta.delta_rule` (same signature, same returns):

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = scale S_t^T q_t

any real beta (beta in (0, 2) gives negative eigenvalues; `allow_neg_eigval` is applied
upstream), g = log gate <= 0 or None. DeltaProduct maps onto it through
`rnnzoo.ops.chunk.delta._product_as_delta`, so it runs on this op unchanged.

Per chunk of C steps with S_0 the entering state, G the inclusive cumulative log gate from
the chunk start and D_ts = e^{G_t - G_s} (s <= t):

    A   = tril(diag(beta) (K K^T o D), -1)              T = (I + A)^{-1}
    W   = T diag(beta e^G) K,   U0 = T diag(beta) V,     U = U0 - W S_0   (pseudo-values)
    O   = scale (diag(e^G) Q S_0 + (Q K^T o D) U)
    S_C = e^{G_C} S_0 + (diag(e^{G_C - G}) K)^T U

Forward kernel: one program per (batch * head, block of BV value channels) -- the columns
of S evolve independently under the delta rule -- looping over chunks with the (K, BV) state
in registers. T is found by forward substitution on the (C, C) tile, row i of T being
e_i - A_i T (A strictly lower), then W, U0 and the products run as `tl.dot`. All decay
exponents are differences G_t - G_s with s <= t, so no factor exceeds 1. The state entering
every chunk is stored, (B, H, N, K, V) float32, when a gradient is needed.

Backward kernel: same grid, walking the chunks in reverse with dS = dL/dS_C and the stored
S_0; it recomputes the chunk-local products (A, T, W, U, P) and, with vb = diag(beta) V,
kb = diag(beta e^G) K, qg = diag(e^G) Q, kd = diag(e^{G_C - G}) K and U = T (vb - kb S_0):

    dU  = P^T dO + kd dS             dUt = T^T dU  (= dL/d vb)
    dP  = causal(dO U^T)             dA  = -strict(dUt U^T)
    dqg = dO S_0^T,  dkd = U dS^T,   dkb = -dUt S_0^T,           dV = diag(beta) dUt
    dQ~ = (dP o D) K + dqg o e^G
    dK  = (dP o D)^T Q~ + (dA' + dA'^T) K + dkd o e^{G_C - G} + dkb o beta e^G,  dA' = dA o beta D
    dbeta_t = sum_s (dA o K K^T o D)_ts + e^{G_t} dkb_t . k_t + dUt_t . v_t
    dS_0 = qg^T dO + e^{G_C} dS - W^T dU

(dA: dT = dU (vb - kb S_0)^T and d(I + A)^{-1} gives dA = -T^T dT T^T = -(T^T dU) U^T),
and the log gate from dG (each factor x e^{+-G} gives +-x dx; A and P give
rowsum - colsum of dA o A and dP o P), dg_t = sum_{s >= t} dG_s + dL/dG_C. Programs over
different value blocks write partial dq, dk, dbeta, dg, summed after; dL/d(initial state)
is the last dS_0. float32 accumulation throughout; float64 inputs are not supported (use
the PyTorch op).
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
from rnnzoo.ops.triton._tiles import unit_lower_inverse as _unit_lower_inverse

__all__ = ["delta_rule"]


@triton.jit
def _delta_fwd_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, h0_ptr, o_ptr, ht_ptr, states_ptr,
                      T, H, K, V, N, scale,
                      GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE: tl.constexpr,
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
    o_base = o_ptr + row_v
    S = _load_state(h0_ptr, pid_bh, K, V, kv_offs, kv_mask, HAS_H0, BK, BV)
    causal = offs_c[:, None] >= offs_c[None, :]
    strict = offs_c[:, None] > offs_c[None, :]
    for n in range(N):
        t = n * C + offs_c
        q = _load_rows(q_base, t, T, HK, offs_k, K) * scale
        k = _load_rows(k_base, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, offs_bv, nv)
        beta = tl.load(beta_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
        kk = tl.dot(k, tl.trans(k), input_precision=PREC)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)
        if GATE:
            g = tl.load(g_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
            G = tl.cumsum(g, 0)
            Gend = tl.sum(g, 0)
            D = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
            A = tl.where(strict, beta[:, None] * kk * D, 0.0)
            P = qk * D
            kb = k * (beta * tl.exp(G))[:, None]
            qg = q * tl.exp(G)[:, None]
            kd = k * tl.exp(Gend - G)[:, None]
        else:
            A = tl.where(strict, beta[:, None] * kk, 0.0)
            P = tl.where(causal, qk, 0.0)
            kb = k * beta[:, None]
            qg = q
            kd = k
        # T = (I + A)^{-1} by forward substitution: row i = e_i - A_i T
        Tinv = _unit_lower_inverse(A, offs_c, C)
        W = tl.dot(Tinv, kb, input_precision=PREC)
        U = tl.dot(Tinv, v * beta[:, None], input_precision=PREC) - tl.dot(
            W, S, input_precision=PREC)
        o = tl.dot(qg, S, input_precision=PREC) + tl.dot(P, U, input_precision=PREC)
        tl.store(o_base + t[:, None] * HV + offs_bv[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        if STORE:
            tl.store(states_ptr + (pid_bh * N + n) * K * V + kv_offs, S, mask=kv_mask)
        upd = tl.dot(tl.trans(kd), U, input_precision=PREC)
        if GATE:
            S = S * tl.exp(Gend) + upd
        else:
            S = S + upd
    tl.store(ht_ptr + pid_bh * K * V + kv_offs, S, mask=kv_mask)


@triton.jit
def _delta_bwd_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, states_ptr, do_ptr, dht_ptr,
                      dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dg_ptr, dh0_ptr,
                      T, H, K, V, N, B, scale,
                      GATE: tl.constexpr, HAS_DHT: tl.constexpr,
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
    # partial (per value block) gradients of q, k, beta, g: buffers with a leading NV dim
    part = pid_v * B * T
    dq_base = dq_ptr + (part + b * T) * HK + h * K
    dk_base = dk_ptr + (part + b * T) * HK + h * K
    dS = _load_state(dht_ptr, pid_bh, K, V, kv_offs, kv_mask, HAS_DHT, BK, BV)
    causal = offs_c[:, None] >= offs_c[None, :]
    strict = offs_c[:, None] > offs_c[None, :]
    for i in range(N):
        n = N - 1 - i
        t = n * C + offs_c
        row_mask_k = (t[:, None] < T) & (offs_k[None, :] < K)
        q = _load_rows(q_base, t, T, HK, offs_k, K) * scale
        k = _load_rows(k_base, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, offs_bv, nv)
        do = _load_rows(do_base, t, T, HV, offs_bv, nv)
        beta = tl.load(beta_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
        S0 = tl.load(states_ptr + (pid_bh * N + n) * K * V + kv_offs, mask=kv_mask, other=0.0)
        kk = tl.dot(k, tl.trans(k), input_precision=PREC)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)
        if GATE:
            g = tl.load(g_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
            G = tl.cumsum(g, 0)
            Gend = tl.sum(g, 0)
            D = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
            eG = tl.exp(G)
            etail = tl.exp(Gend - G)
        else:
            D = tl.where(causal, 1.0, 0.0)
            eG = tl.full((C,), 1.0, tl.float32)
            etail = eG
        # the forward's chunk-local products, recomputed
        A = tl.where(strict, beta[:, None] * kk * D, 0.0)
        P = qk * D
        kb = k * (beta * eG)[:, None]
        qg = q * eG[:, None]
        kd = k * etail[:, None]
        Tinv = _unit_lower_inverse(A, offs_c, C)
        W = tl.dot(Tinv, kb, input_precision=PREC)
        U = tl.dot(Tinv, v * beta[:, None], input_precision=PREC) - tl.dot(
            W, S0, input_precision=PREC)
        # adjoints of O = qg S0 + P U and S_end = e^Gend S0 + kd^T U, with U = T (vb - kb S0)
        dU = tl.dot(tl.trans(P), do, input_precision=PREC) + tl.dot(kd, dS, input_precision=PREC)
        dUt = tl.dot(tl.trans(Tinv), dU, input_precision=PREC)       # dL/d(vb)
        dP = tl.where(causal, tl.dot(do, tl.trans(U), input_precision=PREC), 0.0)
        dA = -tl.where(strict, tl.dot(dUt, tl.trans(U), input_precision=PREC), 0.0)
        dqg = tl.dot(do, tl.trans(S0), input_precision=PREC)
        dkd = tl.dot(U, tl.trans(dS), input_precision=PREC)
        dkb = -tl.dot(dUt, tl.trans(S0), input_precision=PREC)
        dPD = dP * D
        dkk = dA * beta[:, None] * D
        dq = tl.dot(dPD, k, input_precision=PREC) + dqg * eG[:, None]
        dk = (tl.dot(tl.trans(dPD), q, input_precision=PREC)
              + tl.dot(dkk + tl.trans(dkk), k, input_precision=PREC)
              + dkd * etail[:, None] + dkb * (beta * eG)[:, None])
        dbeta = tl.sum(dA * kk * D, 1) + tl.sum(dkb * k, 1) * eG + tl.sum(dUt * v, 1)
        tl.store(dq_base + t[:, None] * HK + offs_k[None, :], dq * scale, mask=row_mask_k)
        tl.store(dk_base + t[:, None] * HK + offs_k[None, :], dk, mask=row_mask_k)
        tl.store(dv_base + t[:, None] * HV + offs_bv[None, :], dUt * beta[:, None],
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        tl.store(dbeta_ptr + (part + b * T + t) * H + h, dbeta, mask=t < T)
        dS_prev = (tl.dot(tl.trans(qg), do, input_precision=PREC)
                   - tl.dot(tl.trans(W), dU, input_precision=PREC))
        if GATE:
            # every factor x e^{+-G} contributes +-x dx to dG; A and P through D
            dAA = dA * A
            dPP = dP * P
            kd_d = tl.sum(dkd * kd, 1)
            dG = (tl.sum(dAA, 1) - tl.sum(dAA, 0) + tl.sum(dPP, 1) - tl.sum(dPP, 0)
                  + tl.sum(dqg * qg, 1) + tl.sum(dkb * kb, 1) - kd_d)
            dGend = tl.sum(kd_d, 0) + tl.exp(Gend) * tl.sum(tl.sum(S0 * dS, 1), 0)
            dg = tl.cumsum(dG, 0, reverse=True) + dGend
            tl.store(dg_ptr + (part + b * T + t) * H + h, dg, mask=t < T)
            dS = dS_prev + dS * tl.exp(Gend)
        else:
            dS = dS_prev + dS
    tl.store(dh0_ptr + pid_bh * K * V + kv_offs, dS, mask=kv_mask)


def _config(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    """(C, BK, BV), fixed by head size: C the largest power of two <= chunk_size in
    [16, 32] (the substitution costs C steps of (C, C) work), BV <= 64."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    C = 32 if chunk_size >= 32 else 16
    return C, BK, BV


class _Delta(first_order.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, chunk_size, plain):
        B, T, H, K = q.shape
        V = v.shape[-1]
        C, BK, BV = _config(K, V, chunk_size)
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        needs_grad = any(ctx.needs_input_grad[:6])
        o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
        ht = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
        states = (torch.empty(B, H, N, K, V, dtype=torch.float32, device=q.device)
                  if needs_grad else ht)
        prec = "ieee" if q.dtype == torch.float32 else "tf32"
        _delta_fwd_kernel[(NV, B * H)](
            q, k, v, beta, g if g is not None else beta, h0 if h0 is not None else q, o, ht,
            states, T, H, K, V, N, scale, GATE=g is not None, HAS_H0=h0 is not None,
            STORE=needs_grad, C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        if needs_grad:
            ctx.save_for_backward(q, k, v, beta, g, h0, states)
            ctx.meta = (scale, C, BK, BV, prec)
        ctx.plain = plain
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def twice(ctx, do, dht):  # under create_graph: autograd through the caller's PyTorch form
        plain, scale = ctx.plain, ctx.meta[0]

        def fn(q, k, v, beta, g, h0):
            return plain(q, k, v, beta, g, scale=scale, initial_state=h0)
        return (*_triton.replay("_Delta", plain, fn, ctx.saved_tensors[:6], (do, dht),
                                ctx.needs_input_grad[:6]), None, None, None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0, states = ctx.saved_tensors
        scale, C, BK, BV, prec = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        f32 = dict(dtype=torch.float32, device=q.device)
        do = torch.zeros(B, T, H, V, **f32) if do is None else do.contiguous()
        dq = torch.empty(NV, B, T, H, K, **f32)
        dk = torch.empty(NV, B, T, H, K, **f32)
        dv = torch.empty(B, T, H, V, **f32)
        dbeta = torch.empty(NV, B, T, H, **f32)
        dg = torch.empty(NV, B, T, H, **f32) if g is not None else dbeta
        dh0 = torch.empty(B, H, K, V, **f32)
        _delta_bwd_kernel[(NV, B * H)](
            q, k, v, beta, g if g is not None else beta, states, do,
            dht.contiguous() if dht is not None else q, dq, dk, dv, dbeta, dg, dh0,
            T, H, K, V, N, B, scale, GATE=g is not None, HAS_DHT=dht is not None,
            C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        return (dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv.to(v.dtype),
                dbeta.sum(0).to(beta.dtype), dg.sum(0).to(g.dtype) if g is not None else None,
                dh0.to(h0.dtype) if h0 is not None else None, None, None, None)


def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, chunk_size=64,
               plain=None):
    """Chunkwise (gated) delta rule in Triton (forward and backward); arguments and returns as
    `rnnzoo.ops.chunk.delta.delta_rule`.

    q, k: (B, T, H, K); v: (B, T, H, V); beta: (B, T, H) (any real); g: (B, T, H) log gate
    or None; scale: default K^-0.5; initial_state: (B, H, K, V) or None. Returns o
    (B, T, H, V) in q's dtype and the final state (B, H, K, V) float32. chunk_size picks
    the kernel's chunk (16 below 32, else 32).
    plain: the op's PyTorch form (same arguments and returns), replayed by the node's `twice`
    under create_graph=True; None: create_graph raises (the package docstring).
    """
    from rnnzoo.ops.chunk._common import check_delta as _check
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check("delta_rule", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)), beta=(beta, (B, T, H)),
                                 g=(g, (B, T, H))), initial_state, V)
    if q.dtype == torch.float64:
        raise TypeError("triton delta_rule: float64 is not supported, "
                        "use rnnzoo.ops.chunk.delta.delta_rule")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"delta_rule: chunk_size must be a positive int, got {chunk_size!r}")
    scale = K ** -0.5 if scale is None else float(scale)
    c = lambda x: None if x is None else x.contiguous()  # noqa: E731
    (q,), (k, v, beta, g), marks = finite_inputs((q,), (k, v, beta, g))  # see ops.finite
    o, S = _Delta.apply(c(q), c(k), c(v), c(beta), c(g), c(initial_state), scale, chunk_size,
                       plain)
    return poison(o, marks.outputs), poison(S, marks.state)
