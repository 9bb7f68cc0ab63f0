"""RWKV-7's generalised delta rule, chunkwise, with a Triton forward.

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

Backward (PyTorch, not Triton): with the stored S_0 of every chunk, a reverse loop over
chunks carries dS = dL/dS_C,

    dZ = (I - A_ab)^{-T} (scale B_rb^T dO + (b o e^{Wc_C - Wc}) dS),
    dS_0 = scale r~^T dO + diag(e^{Wc_C}) dS + a~^T dZ,

and the gradients of r, w, k, v, a, b are those of the surrogate
sum_n <dO_n, O_n(S_0n)> + <dS_n, S_Cn(S_0n)> with every S_0n held constant, by autograd
through the batched chunk-local products; the pair decays there are built exactly as
(..., C, C, K) log-space tensors (O(T C K) memory per head), so no factor can overflow.
A Triton backward (the delta rule's, with a rank-one transition and vector decays) is not
written yet. float32 accumulation; float64 inputs are not supported (use the PyTorch op).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnzoo.ops.finite import finite_inputs, poison

__all__ = ["rwkv7"]

_FACTOR_LIMIT = 30.0  # a chunk's log-decay span up to which pair decays are factorised


@triton.jit
def _load_rows(ptr, t, T, row_stride, offs, n):
    mask = (t[:, None] < T) & (offs[None, :] < n)
    return tl.load(ptr + t[:, None] * row_stride + offs[None, :], mask=mask, other=0.0).to(
        tl.float32)


@triton.jit
def _unit_lower_inverse(A, offs_c, C: tl.constexpr):
    """(I + A)^{-1} for a strictly lower-triangular (C, C) tile, by forward substitution."""
    Tinv = tl.zeros((C, C), dtype=tl.float32)
    for i in range(C):
        a_i = tl.sum(tl.where(offs_c[:, None] == i, A, 0.0), 0)
        x_i = tl.where(offs_c == i, 1.0, 0.0) - tl.sum(a_i[:, None] * Tinv, 0)
        Tinv = tl.where(offs_c[:, None] == i, x_i[None, :], Tinv)
    return Tinv


@triton.jit
def _rwkv7_fwd_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, h0_ptr, o_ptr, ht_ptr,
                      states_ptr, T, H, K, V, N, scale,
                      HAS_H0: tl.constexpr, STORE: tl.constexpr, C: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b_idx = pid_bh // H
    h = pid_bh % H
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_bv = tl.arange(0, BV)
    offs_v = pid_v * BV + offs_bv
    HK = H * K
    HV = H * V
    row_k = b_idx * T * HK + h * K
    v_base = v_ptr + b_idx * T * HV + h * V + pid_v * BV
    o_base = o_ptr + b_idx * T * HV + h * V + pid_v * BV
    nv = V - pid_v * BV
    kv_mask = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    kv_offs = offs_k[:, None] * V + offs_v[None, :]
    if HAS_H0:
        S = tl.load(h0_ptr + pid_bh * K * V + kv_offs, mask=kv_mask, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BK, BV), dtype=tl.float32)
    causal = offs_c[:, None] >= offs_c[None, :]
    strict = offs_c[:, None] > offs_c[None, :]
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


def _config(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    """(C, BK, BV), fixed by head size: C = 32 for chunk_size >= 32, else 16 (the
    substitution costs C steps of (C, C) work); BV <= 64."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    return (32 if chunk_size >= 32 else 16), BK, BV


def _chunk_locals(r, w, k, v, a, b, C):
    """Chunk-local products in PyTorch, (B, H, N, C, ...): B_rb, B_rk, (I - A_ab)^{-1},
    A_ak V, a~, r~, b and k decayed to the chunk end, the chunk decay e^{Wc_C}. Pair decays
    built exactly in log space, masked before the exp."""
    from rnnzoo.ops.chunk._common import to_chunks, unit_lower_inverse
    r, w, k, v, a, b = (to_chunks(x, C) for x in (r, w, k, v, a, b))
    Wc = w.cumsum(-2)
    Wp = Wc - w
    causal = torch.ones(C, C, dtype=torch.bool, device=r.device).tril()
    strict = causal.tril(-1)
    dec_p = (Wp[..., :, None, :] - Wc[..., None, :, :]).masked_fill(
        ~strict[..., None], float("-inf")).exp()              # (B, H, N, C, C, K)
    dec_c = (Wc[..., :, None, :] - Wc[..., None, :, :]).masked_fill(
        ~causal[..., None], float("-inf")).exp()
    A_ab = torch.einsum("...tc,...tsc,...sc->...ts", a, dec_p, b)
    A_ak = torch.einsum("...tc,...tsc,...sc->...ts", a, dec_p, k)
    B_rb = torch.einsum("...tc,...tsc,...sc->...ts", r, dec_c, b)
    B_rk = torch.einsum("...tc,...tsc,...sc->...ts", r, dec_c, k)
    tail = (Wc[..., -1:, :] - Wc).exp()
    return (B_rb, B_rk @ v, unit_lower_inverse(-A_ab), A_ak @ v, a * Wp.exp(), r * Wc.exp(), b * tail,
            k * tail, v, Wc[..., -1, :].exp())


class _RWKV7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, h0, scale, chunk_size):
        B, T, H, K = r.shape
        V = v.shape[-1]
        C, BK, BV = _config(K, V, chunk_size)
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        needs_grad = any(ctx.needs_input_grad[:7])
        o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
        ht = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device)
        states = (torch.empty(B, H, N, K, V, dtype=torch.float32, device=r.device)
                  if needs_grad else ht)
        _rwkv7_fwd_kernel[(NV, B * H)](
            r, w, k, v, a, b, h0 if h0 is not None else r, o, ht, states, T, H, K, V, N, scale,
            HAS_H0=h0 is not None, STORE=needs_grad, C=C, BK=BK, BV=BV,
            PREC="ieee" if r.dtype == torch.float32 else "tf32", num_warps=4)
        if needs_grad:
            ctx.save_for_backward(r, w, k, v, a, b, h0, states)
            ctx.meta = (scale, C)
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        from rnnzoo.ops.chunk._common import to_chunks as _to_chunks
        r, w, k, v, a, b, h0, states = ctx.saved_tensors
        scale, C = ctx.meta
        B, T, H, K = r.shape
        V = v.shape[-1]
        f = torch.float32
        with torch.enable_grad():
            xs = [x.detach().to(f).requires_grad_() for x in (r, w, k, v, a, b)]
            B_rb, BrkV, Tinv, AakV, a_t, r_t, b_end, k_end, vc, decay = _chunk_locals(*xs, C)
            Z = Tinv @ (AakV + a_t @ states)                      # (B, H, N, C, V)
            Oc = scale * (r_t @ states + B_rb @ Z + BrkV)
            S_end = (decay[..., None] * states + b_end.transpose(-1, -2) @ Z
                     + k_end.transpose(-1, -2) @ vc)
        dO = _to_chunks(do.to(f), C) if do is not None else torch.zeros_like(Oc)
        dS = (torch.zeros(B, H, K, V, dtype=f, device=r.device) if dht is None
              else dht.to(f))
        with torch.no_grad():
            BtdO = scale * B_rb.transpose(-1, -2) @ dO
            RtdO = scale * r_t.transpose(-1, -2) @ dO
            dS_end = []
            for n in reversed(range(Oc.shape[2])):
                dS_end.append(dS)
                dZ = Tinv[:, :, n].transpose(-1, -2) @ (BtdO[:, :, n] + b_end[:, :, n] @ dS)
                dS = (RtdO[:, :, n] + decay[:, :, n, :, None] * dS
                      + a_t[:, :, n].transpose(-1, -2) @ dZ)
            dS_end = torch.stack(dS_end[::-1], 2)
        with torch.enable_grad():
            surrogate = (Oc * dO).sum() + (S_end * dS_end).sum()
        grads = torch.autograd.grad(surrogate, xs)
        out = [g.to(x.dtype) for g, x in zip(grads, (r, w, k, v, a, b))]
        return (*out, dS.to(h0.dtype) if h0 is not None else None, None, None)


def rwkv7(r, w, k, v, a, b, *, scale=1.0, initial_state=None, chunk_size=64):
    """Chunkwise RWKV-7 generalised delta rule with a Triton forward; arguments and returns as
    `rnnzoo.ops.chunk.delta.rwkv7`.

    S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T r_t.
    r, w, k, a, b: (B, T, H, K), w the log-decay (<= 0); v: (B, T, H, V); initial_state:
    (B, H, K, V) or None. Returns o (B, T, H, V) in r's dtype and the final state
    (B, H, K, V) float32. chunk_size picks the kernel's chunk (16 below 32, else 32); any
    decay is handled in-kernel (no host read of w).
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
                        chunk_size)
    return poison(o, marks.outputs), poison(S, marks.state)
