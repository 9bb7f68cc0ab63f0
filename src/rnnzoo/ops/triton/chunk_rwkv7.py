"""RWKV-7's generalised delta rule, chunkwise, forward and backward in Triton.

The same op as `rnnzoo.ops.chunk.delta.rwkv7` (same signature, same returns), per head:

    S_t = (diag(e^{w_t}) + b_t a_t^T) S_{t-1} + k_t v_t^T,      o_t = scale S_t^T r_t

w <= 0 the log-decay per key channel (RWKV-7: a = -kappa^, b = kappa^ * a_t). Per chunk of C
steps entering with S_0, Wc the inclusive cumulative w from the chunk start, Wp = Wc - w,
z_t = S_{t-1}^T a_t and, for s < t (strict) or s <= t,

    A_xy[t, s] = sum_c x_tc e^{Wp_tc - Wc_sc} y_sc (s < t),   B_xy[t, s] = sum_c x_tc e^{Wc_tc - Wc_sc} y_sc (s <= t)

    (I - A_ab) Z = diag-decayed(a) S_0 + A_ak V,   a~ = a o e^{Wp}
    O   = scale (r~ S_0 + B_rb Z + B_rk V),        r~ = r o e^{Wc}
    S_C = e^{Wc_C} S_0 + (b o e^{Wc_C - Wc})^T Z + (k o e^{Wc_C - Wc})^T V

Forward kernel: one program per (batch * head, block of BV value channels), looping over the
chunks with the (K, BV) state in registers (columns of S evolve independently). The pair
decays are factored through the chunk's middle step m, (x_t e^{Wx_t - Wc_m}) . (y_s e^{Wc_m -
Wc_s}), while the chunk's log-decay span stays below `_FACTOR_LIMIT` (every factor within
e^{+-30}); a steeper chunk builds the four score matrices exactly, one column at a time from
e^{min(Wx_t - Wc_s, 0)} (O(C^2 K) elementwise work). (I - A_ab)^{-1} by forward substitution
on the (C, C) tile. The state entering each chunk is stored, (B, H, N, K, V) float32, when a
gradient is needed.

Backward kernel: the same programs in reverse chunk order, each chunk's S_0 read from the
stored states and its products recomputed, carrying dS = dL/dS_C (scale folded into dO):

    dZ = B_rb^T dO + b^ dS,  dY = (I - A_ab)^{-T} dZ,  dV = B_rk^T dO + k^ dS + A_ak^T dY,
    dA_ab = dY Z^T, dA_ak = dY V^T (strict),  dB_rb = dO Z^T, dB_rk = dO V^T (causal),
    dS_0 = r~^T dO + diag(e^{Wc_C}) dS + a~^T dY,         (b^, k^ = b, k o e^{Wc_C - Wc})

and a score X[t, s] = sum_c x_tc e^{Wx_tc - Wc_sc} y_sc passes dx_t = sum_s dX[t, s]
e^{Wx_t - Wc_s} y_s and dy_s = sum_t dX[t, s] e^{Wx_t - Wc_s} x_t, factored or exact as in
the forward (B's diagonal, which has no decay, directly). Every factor x e^{+-W} also gives
+-x dx to its log-decay, and dw follows from Wp = Wc - w, Wc = cumsum(w), Wc_C = sum(w) (a
reverse cumulative sum in the chunk). The gradients of r, w, k, a, b are summed over value
blocks on the host (one partial per block). float32 accumulation; float64 inputs are not
supported (use the PyTorch op).
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

__all__ = ["rwkv7"]

_FACTOR_LIMIT = 30.0  # a chunk's log-decay span up to which pair decays are factorised


@triton.jit
def _scores(r, a, bb, k, Wc, Wp, Wend, offs_c, C: tl.constexpr, PREC: tl.constexpr):
    """The chunk's (C, C) score matrices A_ab, A_ak (strict), B_rb, B_rk (causal): factored
    through the middle step while the chunk's log-decay span is below _FACTOR_LIMIT, else
    built exactly one column at a time."""
    causal = offs_c[:, None] >= offs_c[None, :]
    strict = offs_c[:, None] > offs_c[None, :]
    if -tl.min(Wend, 0) < 30.0:  # _FACTOR_LIMIT
        mid = tl.sum(tl.where(offs_c[:, None] == C // 2, Wc, 0.0), 0)
        a_out = a * tl.exp(Wp - mid[None, :])
        r_out = r * tl.exp(Wc - mid[None, :])
        b_in = bb * tl.exp(mid[None, :] - Wc)
        k_in = k * tl.exp(mid[None, :] - Wc)
        A_ab = tl.where(strict, tl.dot(a_out, tl.trans(b_in), input_precision=PREC), 0.0)
        A_ak = tl.where(strict, tl.dot(a_out, tl.trans(k_in), input_precision=PREC), 0.0)
        B_rb = tl.where(causal, tl.dot(r_out, tl.trans(b_in), input_precision=PREC), 0.0)
        B_rk = tl.where(causal, tl.dot(r_out, tl.trans(k_in), input_precision=PREC), 0.0)
    else:
        A_ab = tl.zeros((C, C), dtype=tl.float32)
        A_ak = tl.zeros((C, C), dtype=tl.float32)
        B_rb = tl.zeros((C, C), dtype=tl.float32)
        B_rk = tl.zeros((C, C), dtype=tl.float32)
        for j in range(C):
            sel = offs_c[:, None] == j
            Wj = tl.sum(tl.where(sel, Wc, 0.0), 0)
            bj = tl.sum(tl.where(sel, bb, 0.0), 0)
            kj = tl.sum(tl.where(sel, k, 0.0), 0)
            ea = a * tl.exp(tl.minimum(Wp - Wj[None, :], 0.0))
            er = r * tl.exp(tl.minimum(Wc - Wj[None, :], 0.0))
            below = offs_c > j
            upto = offs_c >= j
            col = offs_c[None, :] == j
            A_ab = tl.where(col, tl.where(below, tl.sum(ea * bj[None, :], 1), 0.0)[:, None],
                            A_ab)
            A_ak = tl.where(col, tl.where(below, tl.sum(ea * kj[None, :], 1), 0.0)[:, None],
                            A_ak)
            B_rb = tl.where(col, tl.where(upto, tl.sum(er * bj[None, :], 1), 0.0)[:, None],
                            B_rb)
            B_rk = tl.where(col, tl.where(upto, tl.sum(er * kj[None, :], 1), 0.0)[:, None],
                            B_rk)
    return A_ab, A_ak, B_rb, B_rk


@triton.jit
def _score_grads(dA_ab, dA_ak, dB_rb, dB_rk, r, a, bb, k, Wc, Wp, Wend, offs_c,
                 C: tl.constexpr, PREC: tl.constexpr):
    """The gradients of a, r, b, k through the four score matrices (adjoints in, zero on and
    above the diagonal: the caller takes B's diagonal, which carries no decay),
    the same two ways as `_scores`: X[t, s] = sum_c x_tc e^{Wx_tc - Wc_sc} y_sc gives
    dx_t = sum_s dX[t, s] e^{Wx_t - Wc_s} y_s and dy_s = sum_t dX[t, s] e^{Wx_t - Wc_s} x_t."""
    if -tl.min(Wend, 0) < 30.0:  # _FACTOR_LIMIT
        mid = tl.sum(tl.where(offs_c[:, None] == C // 2, Wc, 0.0), 0)
        e_p = tl.exp(Wp - mid[None, :])
        e_c = tl.exp(Wc - mid[None, :])
        e_in = tl.exp(mid[None, :] - Wc)
        b_in = bb * e_in
        k_in = k * e_in
        pa = (tl.dot(dA_ab, b_in, input_precision=PREC)
              + tl.dot(dA_ak, k_in, input_precision=PREC)) * e_p
        pr = (tl.dot(dB_rb, b_in, input_precision=PREC)
              + tl.dot(dB_rk, k_in, input_precision=PREC)) * e_c
        a_out = a * e_p
        r_out = r * e_c
        pb = (tl.dot(tl.trans(dA_ab), a_out, input_precision=PREC)
              + tl.dot(tl.trans(dB_rb), r_out, input_precision=PREC)) * e_in
        pk = (tl.dot(tl.trans(dA_ak), a_out, input_precision=PREC)
              + tl.dot(tl.trans(dB_rk), r_out, input_precision=PREC)) * e_in
    else:
        pa = tl.zeros(a.shape, dtype=tl.float32)
        pr = tl.zeros(a.shape, dtype=tl.float32)
        pb = tl.zeros(a.shape, dtype=tl.float32)
        pk = tl.zeros(a.shape, dtype=tl.float32)
        for j in range(C):
            sel = offs_c[:, None] == j
            col = offs_c[None, :] == j
            Wj = tl.sum(tl.where(sel, Wc, 0.0), 0)
            bj = tl.sum(tl.where(sel, bb, 0.0), 0)
            kj = tl.sum(tl.where(sel, k, 0.0), 0)
            e_p = tl.exp(tl.minimum(Wp - Wj[None, :], 0.0))
            e_c = tl.exp(tl.minimum(Wc - Wj[None, :], 0.0))
            g_ab = tl.sum(tl.where(col, dA_ab, 0.0), 1)[:, None]     # column j: (C, 1)
            g_ak = tl.sum(tl.where(col, dA_ak, 0.0), 1)[:, None]
            g_rb = tl.sum(tl.where(col, dB_rb, 0.0), 1)[:, None]
            g_rk = tl.sum(tl.where(col, dB_rk, 0.0), 1)[:, None]
            pa += e_p * (g_ab * bj[None, :] + g_ak * kj[None, :])
            pr += e_c * (g_rb * bj[None, :] + g_rk * kj[None, :])
            pb = tl.where(sel, tl.sum(g_ab * a * e_p + g_rb * r * e_c, 0)[None, :], pb)
            pk = tl.where(sel, tl.sum(g_ak * a * e_p + g_rk * r * e_c, 0)[None, :], pk)
    return pa, pr, pb, pk


@triton.jit
def _rwkv7_fwd_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, h0_ptr, o_ptr, ht_ptr,
                      states_ptr, T, H, K, V, N, scale,
                      HAS_H0: tl.constexpr, STORE: tl.constexpr, C: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    pid_v, pid_bh, b_idx, h, offs_k, offs_bv, nv, row_k, row_v, kv_offs, kv_mask = (
        _head_tile(T, H, K, V, BK, BV))
    offs_c = tl.arange(0, C)
    HK = H * K
    HV = H * V
    v_base = v_ptr + row_v
    o_base = o_ptr + row_v
    S = _load_state(h0_ptr, pid_bh, K, V, kv_offs, kv_mask, HAS_H0, BK, BV)
    for n in range(N):
        t = n * C + offs_c
        r = _load_rows(r_ptr + row_k, t, T, HK, offs_k, K)
        w = _load_rows(w_ptr + row_k, t, T, HK, offs_k, K)
        k = _load_rows(k_ptr + row_k, t, T, HK, offs_k, K)
        a = _load_rows(a_ptr + row_k, t, T, HK, offs_k, K)
        bb = _load_rows(b_ptr + row_k, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, offs_bv, nv)
        Wc = tl.cumsum(w, 0)
        Wp = Wc - w
        Wend = tl.sum(w, 0)
        A_ab, A_ak, B_rb, B_rk = _scores(r, a, bb, k, Wc, Wp, Wend, offs_c, C, PREC)
        Tinv = _unit_lower_inverse(-A_ab, offs_c, C)        # (I - A_ab)^{-1}
        Z = tl.dot(Tinv, tl.dot(A_ak, v, input_precision=PREC)
                   + tl.dot(a * tl.exp(Wp), S, input_precision=PREC), input_precision=PREC)
        o = (tl.dot(r * tl.exp(Wc), S, input_precision=PREC)
             + tl.dot(B_rb, Z, input_precision=PREC) + tl.dot(B_rk, v, input_precision=PREC))
        tl.store(o_base + t[:, None] * HV + offs_bv[None, :],
                 (o * scale).to(o_ptr.dtype.element_ty),
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        if STORE:
            tl.store(states_ptr + (pid_bh * N + n) * K * V + kv_offs, S, mask=kv_mask)
        tail = tl.exp(Wend[None, :] - Wc)
        S = (S * tl.exp(Wend)[:, None] + tl.dot(tl.trans(bb * tail), Z, input_precision=PREC)
             + tl.dot(tl.trans(k * tail), v, input_precision=PREC))
    tl.store(ht_ptr + pid_bh * K * V + kv_offs, S, mask=kv_mask)


@triton.jit
def _rwkv7_bwd_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, states_ptr, do_ptr, dht_ptr,
                      dr_ptr, dw_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr, dh0_ptr,
                      T, H, K, V, N, B, scale,
                      HAS_DHT: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, PREC: tl.constexpr):
    """Reverse over chunks with dS = dL/dS_C; one program per (value block, batch * head).
    dr, dw, dk, da, db: (NV, B, T, H, K) partial sums (one per value block), dv (B, T, H, V),
    dh0 (B, H, K, V)."""
    pid_v, pid_bh, b_idx, h, offs_k, offs_bv, nv, row_k, row_v, kv_offs, kv_mask = (
        _head_tile(T, H, K, V, BK, BV))
    offs_c = tl.arange(0, C)
    HK = H * K
    HV = H * V
    row_part = (pid_v * B * T + b_idx * T) * HK + h * K
    dS = _load_state(dht_ptr, pid_bh, K, V, kv_offs, kv_mask, HAS_DHT, BK, BV)
    strict = offs_c[:, None] > offs_c[None, :]
    for i in range(N):
        n = N - 1 - i
        t = n * C + offs_c
        r = _load_rows(r_ptr + row_k, t, T, HK, offs_k, K)
        w = _load_rows(w_ptr + row_k, t, T, HK, offs_k, K)
        k = _load_rows(k_ptr + row_k, t, T, HK, offs_k, K)
        a = _load_rows(a_ptr + row_k, t, T, HK, offs_k, K)
        bb = _load_rows(b_ptr + row_k, t, T, HK, offs_k, K)
        v = _load_rows(v_ptr + row_v, t, T, HV, offs_bv, nv)
        dO = _load_rows(do_ptr + row_v, t, T, HV, offs_bv, nv) * scale
        S = tl.load(states_ptr + (pid_bh * N + n) * K * V + kv_offs, mask=kv_mask, other=0.0)
        Wc = tl.cumsum(w, 0)
        Wp = Wc - w
        Wend = tl.sum(w, 0)
        eWp = tl.exp(Wp)
        eWc = tl.exp(Wc)
        tail = tl.exp(Wend[None, :] - Wc)
        eWend = tl.exp(Wend)
        # the forward's chunk products, recomputed
        A_ab, A_ak, B_rb, B_rk = _scores(r, a, bb, k, Wc, Wp, Wend, offs_c, C, PREC)
        Tinv = _unit_lower_inverse(-A_ab, offs_c, C)
        Z = tl.dot(Tinv, tl.dot(A_ak, v, input_precision=PREC)
                   + tl.dot(a * eWp, S, input_precision=PREC), input_precision=PREC)
        # adjoints of O = r~ S + B_rb Z + B_rk V and S_C = e^Wend S + b^T Z + k^T V
        # (r~ = r e^Wc, b^ = b e^{Wend - Wc}, k^ likewise), then of (I - A_ab) Z = Y
        dZ = (tl.dot(tl.trans(B_rb), dO, input_precision=PREC)
              + tl.dot(bb * tail, dS, input_precision=PREC))
        dv = (tl.dot(tl.trans(B_rk), dO, input_precision=PREC)
              + tl.dot(k * tail, dS, input_precision=PREC))
        dY = tl.dot(tl.trans(Tinv), dZ, input_precision=PREC)
        dv += tl.dot(tl.trans(A_ak), dY, input_precision=PREC)
        # B_rb, B_rk's diagonal (s = t) has no decay: its gradients go straight to r, b, k
        # (through the factored path they would leave float32 noise in dw where it is 0)
        dOZ = tl.dot(dO, tl.trans(Z), input_precision=PREC)
        dOV = tl.dot(dO, tl.trans(v), input_precision=PREC)
        eye = offs_c[:, None] == offs_c[None, :]
        g_rb = tl.sum(tl.where(eye, dOZ, 0.0), 1)[:, None]
        g_rk = tl.sum(tl.where(eye, dOV, 0.0), 1)[:, None]
        dB_rb = tl.where(strict, dOZ, 0.0)
        dB_rk = tl.where(strict, dOV, 0.0)
        dA_ab = tl.where(strict, tl.dot(dY, tl.trans(Z), input_precision=PREC), 0.0)
        dA_ak = tl.where(strict, tl.dot(dY, tl.trans(v), input_precision=PREC), 0.0)
        dr_t = tl.dot(dO, tl.trans(S), input_precision=PREC)       # d r~
        da_t = tl.dot(dY, tl.trans(S), input_precision=PREC)       # d a~
        db_h = tl.dot(Z, tl.trans(dS), input_precision=PREC)       # d b^
        dk_h = tl.dot(v, tl.trans(dS), input_precision=PREC)       # d k^
        pa, pr, pb, pk = _score_grads(dA_ab, dA_ak, dB_rb, dB_rk, r, a, bb, k, Wc, Wp, Wend,
                                      offs_c, C, PREC)
        dr = dr_t * eWc + pr + g_rb * bb + g_rk * k
        da = da_t * eWp + pa
        db = db_h * tail + pb + g_rb * r
        dk = dk_h * tail + pk + g_rk * r
        # log-decays: every factor x e^{+-W} gives +-x dx; Wp = Wc - w, Wc = cumsum(w),
        # Wend = sum(w)
        end_terms = db_h * bb * tail + dk_h * k * tail
        dWp = da_t * a * eWp + a * pa
        dWc = dr_t * r * eWc + r * pr - bb * pb - k * pk - end_terms + dWp
        dWend = tl.sum(end_terms, 0) + eWend * tl.sum(S * dS, 1)
        dw = tl.cumsum(dWc, 0, reverse=True) - dWp + dWend[None, :]
        mask_k = (t[:, None] < T) & (offs_k[None, :] < K)
        offs = t[:, None] * HK + offs_k[None, :]
        tl.store(dr_ptr + row_part + offs, dr, mask=mask_k)
        tl.store(dw_ptr + row_part + offs, dw, mask=mask_k)
        tl.store(dk_ptr + row_part + offs, dk, mask=mask_k)
        tl.store(da_ptr + row_part + offs, da, mask=mask_k)
        tl.store(db_ptr + row_part + offs, db, mask=mask_k)
        tl.store(dv_ptr + row_v + t[:, None] * HV + offs_bv[None, :], dv,
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        dS = (tl.dot(tl.trans(r * eWc), dO, input_precision=PREC) + eWend[:, None] * dS
              + tl.dot(tl.trans(a * eWp), dY, input_precision=PREC))
    tl.store(dh0_ptr + pid_bh * K * V + kv_offs, dS, mask=kv_mask)


def _config(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    """(C, BK, BV), fixed by head size: C = 32 for chunk_size >= 32, else 16 (the
    substitution costs C steps of (C, C) work); BV <= 64."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    return (32 if chunk_size >= 32 else 16), BK, BV


class _RWKV7(first_order.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, h0, scale, chunk_size, plain):
        B, T, H, K = r.shape
        V = v.shape[-1]
        C, BK, BV = _config(K, V, chunk_size)
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        needs_grad = any(ctx.needs_input_grad[:7])
        o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
        ht = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device)
        states = (torch.empty(B, H, N, K, V, dtype=torch.float32, device=r.device)
                  if needs_grad else ht)
        prec = "ieee" if r.dtype == torch.float32 else "tf32"
        _rwkv7_fwd_kernel[(NV, B * H)](
            r, w, k, v, a, b, h0 if h0 is not None else r, o, ht, states, T, H, K, V, N, scale,
            HAS_H0=h0 is not None, STORE=needs_grad, C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        if needs_grad:
            ctx.save_for_backward(r, w, k, v, a, b, h0, states)
            ctx.meta = (scale, C, BK, BV, prec)
        ctx.plain = plain
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def twice(ctx, do, dht):  # under create_graph: autograd through the caller's PyTorch form
        plain, scale = ctx.plain, ctx.meta[0]

        def fn(r, w, k, v, a, b, h0):
            return plain(r, w, k, v, a, b, scale=scale, initial_state=h0)
        return (*_triton.replay("_RWKV7", plain, fn, ctx.saved_tensors[:7], (do, dht),
                                ctx.needs_input_grad[:7]), None, None, None)

    @staticmethod
    def backward(ctx, do, dht):
        r, w, k, v, a, b, h0, states = ctx.saved_tensors
        scale, C, BK, BV, prec = ctx.meta
        B, T, H, K = r.shape
        V = v.shape[-1]
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        f = torch.float32
        do = do.contiguous() if do is not None else torch.zeros_like(v)
        dr, dw, dk, da, db = (torch.empty(NV, B, T, H, K, dtype=f, device=r.device)
                              for _ in range(5))
        dv = torch.empty(B, T, H, V, dtype=f, device=r.device)
        dh0 = torch.empty(B, H, K, V, dtype=f, device=r.device)
        _rwkv7_bwd_kernel[(NV, B * H)](
            r, w, k, v, a, b, states, do, dht.contiguous() if dht is not None else r,
            dr, dw, dk, dv, da, db, dh0, T, H, K, V, N, B, scale, HAS_DHT=dht is not None,
            C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        dr, dw, dk, da, db = (g.sum(0).to(x.dtype) for g, x in zip((dr, dw, dk, da, db),
                                                                    (r, w, k, a, b)))
        return (dr, dw, dk, dv.to(v.dtype), da, db,
                dh0.to(h0.dtype) if h0 is not None else None, None, None, None)


def rwkv7(r, w, k, v, a, b, *, scale=1.0, initial_state=None, chunk_size=64, plain=None):
    """Chunkwise RWKV-7 generalised delta rule in Triton (forward and backward); arguments and
    returns as
    `rnnzoo.ops.chunk.delta.rwkv7`.

    S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T r_t.
    r, w, k, a, b: (B, T, H, K), w the log-decay (<= 0); v: (B, T, H, V); initial_state:
    (B, H, K, V) or None. Returns o (B, T, H, V) in r's dtype and the final state
    (B, H, K, V) float32. chunk_size picks the kernel's chunk (16 below 32, else 32); any
    decay is handled in-kernel (no host read of w).
    plain: the op's PyTorch form (same arguments and returns), replayed by the node's `twice`
    under create_graph=True; None: create_graph raises (the package docstring).
    """
    from rnnzoo.ops.chunk._common import check_rwkv7 as _check_rwkv7
    _check_rwkv7(r, w, k, v, a, b, initial_state)
    if r.dtype == torch.float64:
        raise TypeError("triton rwkv7: float64 is not supported, use rnnzoo.ops.chunk.delta.rwkv7")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"rwkv7: chunk_size must be a positive int, got {chunk_size!r}")
    c = lambda x: None if x is None else x.contiguous()  # noqa: E731
    (r,), (w, k, v, a, b), marks = finite_inputs((r,), (w, k, v, a, b))  # see ops.finite
    o, S = _RWKV7.apply(c(r), c(w), c(k), c(v), c(a), c(b), c(initial_state), float(scale),
                        chunk_size, plain)
    return poison(o, marks.outputs), poison(S, marks.state)
