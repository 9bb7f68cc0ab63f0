"""The gated delta rule, chunkwise in WY/UT form, with a Triton forward.

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

Backward (PyTorch, no Triton): with the stored S_0 of every chunk, the adjoint splits into
per-chunk pieces. A reverse loop over chunks carries dS = dL/dS_C:

    dU = (Q K^T o D)^T dO + diag(e^{G_C - G}) K dS,   dS_0 = diag(e^G) Q^T dO + e^{G_C} dS - W^T dU

and the gradients of q, k, v, beta, g are those of the surrogate
sum_n <dO_n, O_n(S_0n)> + <dS_n, S_Cn(S_0n)> with every S_0n held constant, taken by
autograd through the batched chunk-local products (K K^T, the triangular solve, Q K^T)
in PyTorch; dL/d(initial state) is the final dS_0. float32 accumulation throughout;
float64 inputs are not supported (use the PyTorch op).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["delta_rule"]


@triton.jit
def _load_rows(ptr, t, T, row_stride, offs, n):
    mask = (t[:, None] < T) & (offs[None, :] < n)
    return tl.load(ptr + t[:, None] * row_stride + offs[None, :], mask=mask, other=0.0).to(
        tl.float32)


@triton.jit
def _delta_fwd_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, h0_ptr, o_ptr, ht_ptr, states_ptr,
                      T, H, K, V, N, scale,
                      GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE: tl.constexpr,
                      C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      PREC: tl.constexpr):
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_bv = tl.arange(0, BV)
    offs_v = pid_v * BV + offs_bv
    HK = H * K
    HV = H * V
    q_base = q_ptr + b * T * HK + h * K
    k_base = k_ptr + b * T * HK + h * K
    v_base = v_ptr + b * T * HV + h * V + pid_v * BV
    o_base = o_ptr + b * T * HV + h * V + pid_v * BV
    nv = V - pid_v * BV
    kv_mask = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    kv_offs = offs_k[:, None] * V + offs_v[None, :]
    if HAS_H0:
        S = tl.load(h0_ptr + pid_bh * K * V + kv_offs, mask=kv_mask, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BK, BV), dtype=tl.float32)
    causal = offs_c[:, None] >= offs_c[None, :]
    strict = offs_c[:, None] > offs_c[None, :]
    eye = tl.where(offs_c[:, None] == offs_c[None, :], 1.0, 0.0)
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
        Tinv = tl.zeros((C, C), dtype=tl.float32)
        for i in range(C):
            a_i = tl.sum(tl.where(offs_c[:, None] == i, A, 0.0), 0)
            e_i = tl.sum(tl.where(offs_c[:, None] == i, eye, 0.0), 0)
            x_i = e_i - tl.sum(a_i[:, None] * Tinv, 0)
            Tinv = tl.where(offs_c[:, None] == i, x_i[None, :], Tinv)
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


def _config(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    """(C, BK, BV), fixed by head size: C the largest power of two <= chunk_size in
    [16, 32] (the substitution costs C steps of (C, C) work), BV <= 64."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    C = 32 if chunk_size >= 32 else 16
    return C, BK, BV


def _chunk_locals(q, k, v, beta, g, C):
    """The chunk-local quantities in PyTorch, (B, H, N, C, ...) float32: P = Q K^T o D,
    W, U0, diag(e^G) Q, diag(e^{G_C - G}) K and the chunk decay e^{G_C} (or None)."""
    from rnnzoo.ops.chunk.delta import _to_chunks, _unit_lower_inverse
    q, k, v = (_to_chunks(x, C) for x in (q, k, v))
    beta = _to_chunks(beta, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if g is None:
        decay = causal.to(q.dtype)
        Qg, Kd, gamma, kb = q, k, None, beta[..., None] * k
    else:
        G = _to_chunks(g, C).cumsum(-1)
        decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        Qg, Kd = q * G.exp()[..., None], k * (G[..., -1:] - G).exp()[..., None]
        gamma, kb = G[..., -1].exp(), (beta * G.exp())[..., None] * k
    A = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * decay).tril(-1)
    Tinv = _unit_lower_inverse(A)
    return (q @ k.transpose(-1, -2)) * decay, Tinv @ kb, Tinv @ (beta[..., None] * v), Qg, Kd, gamma


class _Delta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, chunk_size):
        B, T, H, K = q.shape
        V = v.shape[-1]
        C, BK, BV = _config(K, V, chunk_size)
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        needs_grad = any(ctx.needs_input_grad[:6])
        o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
        ht = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
        states = (torch.empty(B, H, N, K, V, dtype=torch.float32, device=q.device)
                  if needs_grad else ht)
        _delta_fwd_kernel[(NV, B * H)](
            q, k, v, beta, g if g is not None else beta, h0 if h0 is not None else q, o, ht,
            states, T, H, K, V, N, scale, GATE=g is not None, HAS_H0=h0 is not None,
            STORE=needs_grad, C=C, BK=BK, BV=BV,
            PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4)
        if needs_grad:
            ctx.save_for_backward(q, k, v, beta, g, h0, states)
            ctx.meta = (scale, C)
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        from rnnzoo.ops.chunk.delta import _to_chunks
        q, k, v, beta, g, h0, states = ctx.saved_tensors
        scale, C = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        f = torch.float32
        with torch.enable_grad():
            xs = [x.detach().to(f).requires_grad_() if x is not None else None
                  for x in (q, k, v, beta, g)]
            P, W, U0, Qg, Kd, gamma = _chunk_locals(xs[0] * scale, *xs[1:], C)
            U = U0 - W @ states                                   # (B, H, N, C, V)
            Oc = Qg @ states + P @ U
            S_end = Kd.transpose(-1, -2) @ U + (
                states if gamma is None else gamma[..., None, None] * states)
        dO = (_to_chunks(do.to(f), C) if do is not None
              else torch.zeros_like(Oc))                           # (B, H, N, C, V)
        dS = (torch.zeros(B, H, K, V, dtype=f, device=q.device) if dht is None
              else dht.to(f))
        with torch.no_grad():
            PtdO = P.transpose(-1, -2) @ dO
            QtdO = Qg.transpose(-1, -2) @ dO
            dS_end = []
            n_chunks = P.shape[2]
            for n in reversed(range(n_chunks)):
                dS_end.append(dS)
                dU = PtdO[:, :, n] + Kd[:, :, n] @ dS
                dS = QtdO[:, :, n] - W[:, :, n].transpose(-1, -2) @ dU + (
                    dS if gamma is None else gamma[:, :, n, None, None] * dS)
            dS_end = torch.stack(dS_end[::-1], 2)
        live = [x for x in xs if x is not None]
        with torch.enable_grad():
            surrogate = (Oc * dO).sum() + (S_end * dS_end).sum()
        grads = iter(torch.autograd.grad(surrogate, live, allow_unused=True))
        out = []
        for x, orig in zip(xs, (q, k, v, beta, g)):
            if x is None:
                out.append(None)
                continue
            gx = next(grads)
            out.append(torch.zeros_like(orig) if gx is None else gx.to(orig.dtype))
        dh0 = dS.to(h0.dtype) if h0 is not None else None
        return (*out, dh0, None, None)


def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, chunk_size=64):
    """Chunkwise (gated) delta rule with a Triton forward; arguments and returns as
    `rnnzoo.ops.chunk.delta.delta_rule`.

    q, k: (B, T, H, K); v: (B, T, H, V); beta: (B, T, H) (any real); g: (B, T, H) log gate
    or None; scale: default K^-0.5; initial_state: (B, H, K, V) or None. Returns o
    (B, T, H, V) in q's dtype and the final state (B, H, K, V) float32. chunk_size picks
    the kernel's chunk (16 below 32, else 32).
    """
    from rnnzoo.ops.chunk.delta import _check
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
    return _Delta.apply(c(q), c(k), c(v), c(beta), c(g), c(initial_state), scale, chunk_size)
