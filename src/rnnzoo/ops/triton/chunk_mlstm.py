"""mLSTM, chunkwise with the max-stabiliser, forward and backward in Triton.

The same op as `rnnzoo.ops.chunk.linear.mlstm` (same signature, same returns). Per head,
with q~ = scale * q, input gate pre-activation i~ (= log i), log forget gate lf and the state
(C, n, m):

    m_t = max(lf_t + m_{t-1}, i~_t)
    C_t = e^{lf_t + m_{t-1} - m_t} C_{t-1} + e^{i~_t - m_t} k_t v_t^T
    n_t = e^{lf_t + m_{t-1} - m_t} n_{t-1} + e^{i~_t - m_t} k_t
    h_t = C_t^T q~_t / (max(|n_t^T q~_t|, e^{-m_t}) + eps)

Per chunk of L steps entering with (C_0, n_0, m_0), F the inclusive cumulative lf from the
chunk start, W_ts = F_t - F_s + i~_s (s <= t, else -inf) and a_t = F_t + m_0, the
recurrent stabiliser is m_t = max(a_t, max_s W_ts) (the loop's own m, row by row), and

    D = e^{W - m} (<= 1),   Sc = (Q~ K^T) o D,   qi = diag(e^{a - m}) Q~
    num = Sc V + qi C_0,    den = rowsum(Sc) + qi n_0,   h = num / (max(|den|, e^{-m}) + eps)
    chunk end (row L-1):  m' = m_{L-1},  w_s = e^{W_{L-1,s} - m'},  d = e^{a_{L-1} - m'}
    C' = d C_0 + K^T diag(w) V,   n' = d n_0 + K^T w

so every exponential is of a non-positive number. A ragged last chunk is padded with
i~ = -inf, lf = 0, k = v = 0 (no effect on any state).

Kernels: one program per (batch * head, block of BV value channels), looping over the
chunks with the (K, BV) block of C in registers; n and m (shared by all value blocks) are
recomputed by each program and written by block 0. The forward stores (C_0, n_0, m_0) of
every chunk when a gradient is needed. The backward walks the chunks in reverse carrying
(dC, dn, dm) = dL/d(C', n', m'), recomputes the chunk's products and, with
den~ = max(|den|, e^{-m}) + eps:

    dnum = dh / den~,  dden~ = -rowsum(dh o h) / den~  -> dden (sign(den), where |den| wins)
                                                          or dm -= dden~ e^{-m} (else)
    dSc  = causal(dnum V^T + dden 1^T),   dV = Sc^T dnum + diag(w) K dC
    dqi  = dnum C_0^T + dden n_0^T,       dC_0 = qi^T dnum + d dC,   dn_0 = qi^T dden + d dn
    dQ~  = (dSc o D) K + dqi o e^{a - m},  dK = (dSc o D)^T Q~ + diag(w) (V dC^T + 1 dn^T)

and the log-space adjoints: dW += dSc o Sc, da += rowsum(dqi o qi), dm -= both; the chunk
end adds to row L-1 (da += x, dW_{L-1,s} += y_s, dm += dm' - x - sum y, with
x = d (<C_0, dC> + <n_0, dn>), y = w o rowsum((V dC^T + 1 dn^T) o K)). dm_t then goes to the
argument of the max (a_t or the first argmax of W_t), and from W_ts = F_t - F_s + i~_s,
a_t = F_t + m_0: di~ = colsum(dW), dF = rowsum(dW) - colsum(dW) + da, dlf = reverse
cumsum of dF, dm_0 = sum(da). Ties in the max are sent to one side (the loop's
`torch.maximum` splits them; they have measure zero for real-valued inputs).

The adjoint is linear, so value blocks split it: each program takes its block of dh and dC
and (block 0 only) dn', dm', and writes partial dq, dk, di~, dlf, dn_0, dm_0, summed after.
Accumulation is float32 (float64 inputs are not supported: use the PyTorch op); h comes
back in q's dtype and the state in float32.
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

__all__ = ["mlstm"]


@triton.jit
def _mlstm_fwd_kernel(q_ptr, k_ptr, v_ptr, li_ptr, lf_ptr, c0_ptr, n0_ptr, m0_ptr,
                      h_ptr, ct_ptr, nt_ptr, mt_ptr, sc_ptr, sn_ptr, sm_ptr,
                      T, H, K, V, N, scale, eps,
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
    h_base = h_ptr + row_v
    k_mask = offs_k < K
    first = (offs_k * 0 + pid_v) == 0                   # (BK,): block 0 writes n and m
    one = (offs_c == 0) & ((offs_c * 0 + pid_v) == 0)   # (C,): a single lane of block 0
    S = _load_state(c0_ptr, pid_bh, K, V, kv_offs, kv_mask, True, BK, BV)
    nvec = tl.load(n0_ptr + pid_bh * K + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    m = tl.load(m0_ptr + pid_bh).to(tl.float32)
    causal = offs_c[:, None] >= offs_c[None, :]
    for n in range(N):
        t = n * C + offs_c
        q = _load_rows(q_base, t, T, HK, offs_k, K) * scale
        k = _load_rows(k_base, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, offs_bv, nv)
        li = tl.load(li_ptr + b * T * H + t * H + h, mask=t < T, other=float("-inf")).to(
            tl.float32)
        lf = tl.load(lf_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
        F = tl.cumsum(lf, 0)
        Fend = tl.sum(lf, 0)
        Wm = tl.where(causal, F[:, None] - F[None, :] + li[None, :], float("-inf"))
        a = F + m
        mrow = tl.maximum(a, tl.max(Wm, 1))
        Sc = tl.dot(q, tl.trans(k), input_precision=PREC) * tl.exp(Wm - mrow[:, None])
        qi = q * tl.exp(a - mrow)[:, None]
        num = tl.dot(Sc, v, input_precision=PREC) + tl.dot(qi, S, input_precision=PREC)
        den = tl.sum(Sc, 1) + tl.sum(qi * nvec[None, :], 1)
        out = num / (tl.maximum(tl.abs(den), tl.exp(-mrow)) + eps)[:, None]
        tl.store(h_base + t[:, None] * HV + offs_bv[None, :], out.to(h_ptr.dtype.element_ty),
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        if STORE:
            tl.store(sc_ptr + (pid_bh * N + n) * K * V + kv_offs, S, mask=kv_mask)
            tl.store(sn_ptr + (pid_bh * N + n) * K + offs_k, nvec, mask=k_mask & first)
            tl.store(sm_ptr + pid_bh * N + n + offs_c * 0, m + tl.zeros((C,), tl.float32),
                     mask=one)
        wend = Fend - F + li
        m_new = tl.maximum(Fend + m, tl.max(wend, 0))
        w = tl.exp(wend - m_new)
        d = tl.exp(Fend + m - m_new)
        kw = k * w[:, None]
        S = S * d + tl.dot(tl.trans(kw), v, input_precision=PREC)
        nvec = nvec * d + tl.sum(kw, 0)
        m = m_new
    tl.store(ct_ptr + pid_bh * K * V + kv_offs, S, mask=kv_mask)
    tl.store(nt_ptr + pid_bh * K + offs_k, nvec, mask=k_mask & first)
    tl.store(mt_ptr + pid_bh + offs_c * 0, m + tl.zeros((C,), tl.float32), mask=one)


@triton.jit
def _mlstm_bwd_kernel(q_ptr, k_ptr, v_ptr, li_ptr, lf_ptr, sc_ptr, sn_ptr, sm_ptr,
                      dh_ptr, dct_ptr, dnt_ptr, dmt_ptr,
                      dq_ptr, dk_ptr, dv_ptr, dli_ptr, dlf_ptr, dc0_ptr, dn0_ptr, dm0_ptr,
                      T, H, K, V, N, B, scale, eps,
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
    dh_base = dh_ptr + row_v
    dv_base = dv_ptr + row_v
    part = pid_v * B * T       # partial (per value block) gradients: leading NV dimension
    dq_base = dq_ptr + (part + b * T) * HK + h * K
    dk_base = dk_ptr + (part + b * T) * HK + h * K
    k_mask = offs_k < K
    first = (offs_k * 0 + pid_v) == 0
    dS = _load_state(dct_ptr, pid_bh, K, V, kv_offs, kv_mask, True, BK, BV)
    dn = tl.load(dnt_ptr + pid_bh * K + offs_k, mask=k_mask & first, other=0.0).to(tl.float32)
    dm_c = tl.load(dmt_ptr + pid_bh + offs_c * 0, mask=(offs_c * 0 + pid_v == 0) & (offs_c == C - 1),
                   other=0.0).to(tl.float32)            # dL/dm' placed on row C - 1
    causal = offs_c[:, None] >= offs_c[None, :]
    last = offs_c == C - 1
    for i in range(N):
        n = N - 1 - i
        t = n * C + offs_c
        row_mask_k = (t[:, None] < T) & (offs_k[None, :] < K)
        q = _load_rows(q_base, t, T, HK, offs_k, K) * scale
        k = _load_rows(k_base, t, T, HK, offs_k, K)
        v = _load_rows(v_base, t, T, HV, offs_bv, nv)
        dh = _load_rows(dh_base, t, T, HV, offs_bv, nv)
        li = tl.load(li_ptr + b * T * H + t * H + h, mask=t < T, other=float("-inf")).to(
            tl.float32)
        lf = tl.load(lf_ptr + b * T * H + t * H + h, mask=t < T, other=0.0).to(tl.float32)
        S0 = tl.load(sc_ptr + (pid_bh * N + n) * K * V + kv_offs, mask=kv_mask, other=0.0)
        n0 = tl.load(sn_ptr + (pid_bh * N + n) * K + offs_k, mask=k_mask, other=0.0)
        m0 = tl.load(sm_ptr + pid_bh * N + n)
        # the forward's chunk, recomputed
        F = tl.cumsum(lf, 0)
        Fend = tl.sum(lf, 0)
        Wm = tl.where(causal, F[:, None] - F[None, :] + li[None, :], float("-inf"))
        a = F + m0
        maxW = tl.max(Wm, 1)
        mrow = tl.maximum(a, maxW)
        D = tl.exp(Wm - mrow[:, None])
        Sc = tl.dot(q, tl.trans(k), input_precision=PREC) * D
        ea = tl.exp(a - mrow)
        qi = q * ea[:, None]
        num = tl.dot(Sc, v, input_precision=PREC) + tl.dot(qi, S0, input_precision=PREC)
        den = tl.sum(Sc, 1) + tl.sum(qi * n0[None, :], 1)
        floor = tl.exp(-mrow)
        dent = tl.maximum(tl.abs(den), floor) + eps
        # h = num / dent
        dnum = dh / dent[:, None]
        ddent = -tl.sum(dnum * num, 1) / dent
        use_den = tl.abs(den) >= floor
        dden = tl.where(use_den, tl.where(den >= 0, ddent, -ddent), 0.0)
        dm = tl.where(use_den, 0.0, -ddent * floor)
        # num = Sc V + qi C_0, den = rowsum(Sc) + qi n_0
        dSc = tl.where(causal, tl.dot(dnum, tl.trans(v), input_precision=PREC)
                       + dden[:, None], 0.0)
        dv = tl.dot(tl.trans(Sc), dnum, input_precision=PREC)
        dqi = tl.dot(dnum, tl.trans(S0), input_precision=PREC) + dden[:, None] * n0[None, :]
        dC0 = tl.dot(tl.trans(qi), dnum, input_precision=PREC)
        dn0 = tl.sum(qi * dden[:, None], 0)
        dSD = dSc * D
        dq = tl.dot(dSD, k, input_precision=PREC) + dqi * ea[:, None]
        dk = tl.dot(tl.trans(dSD), q, input_precision=PREC)
        dW = dSc * Sc
        dqq = tl.sum(dqi * qi, 1)
        da = dqq
        dm = dm - tl.sum(dW, 1) - dqq + dm_c
        # chunk end: C' = d C_0 + K^T diag(w) V, n' = d n_0 + K^T w (row C - 1's stabiliser)
        wend = Fend - F + li
        w = tl.exp(wend - tl.maximum(Fend + m0, tl.max(wend, 0)))
        d = tl.exp(Fend + m0 - tl.maximum(Fend + m0, tl.max(wend, 0)))
        dC0 += d * dS
        dn0 += d * dn
        x = d * (tl.sum(tl.sum(S0 * dS, 1), 0) + tl.sum(n0 * dn, 0))
        dkw = tl.dot(v, tl.trans(dS), input_precision=PREC) + dn[None, :]   # dL/d(w_s k_s)
        dk += dkw * w[:, None]
        dv += w[:, None] * tl.dot(k, dS, input_precision=PREC)
        y = w * tl.sum(dkw * k, 1)
        da += tl.where(last, x, 0.0)
        dW += tl.where(last[:, None], y[None, :], 0.0)
        dm += tl.where(last, -x - tl.sum(y, 0), 0.0)
        # m_t = max(a_t, max_s W_ts): dm to the winning argument
        from_a = a >= maxW
        da += tl.where(from_a, dm, 0.0)
        am = tl.argmax(Wm, 1)
        dW += tl.where((offs_c[None, :] == am[:, None]) & (~from_a)[:, None], dm[:, None], 0.0)
        dW = tl.where(causal, dW, 0.0)
        cs = tl.sum(dW, 0)
        dF = tl.sum(dW, 1) - cs + da
        dlf = tl.cumsum(dF, 0, reverse=True)
        tl.store(dq_base + t[:, None] * HK + offs_k[None, :], dq * scale, mask=row_mask_k)
        tl.store(dk_base + t[:, None] * HK + offs_k[None, :], dk, mask=row_mask_k)
        tl.store(dv_base + t[:, None] * HV + offs_bv[None, :], dv,
                 mask=(t[:, None] < T) & (offs_bv[None, :] < nv))
        tl.store(dli_ptr + (part + b * T + t) * H + h, cs, mask=t < T)
        tl.store(dlf_ptr + (part + b * T + t) * H + h, dlf, mask=t < T)
        dS = dC0
        dn = dn0
        dm_c = tl.where(last, tl.sum(da, 0), 0.0)
    tl.store(dc0_ptr + pid_bh * K * V + kv_offs, dS, mask=kv_mask)
    tl.store(dn0_ptr + (pid_v * B * H + pid_bh) * K + offs_k, dn, mask=k_mask)
    tl.store(dm0_ptr + pid_v * B * H + pid_bh + offs_c * 0, dm_c, mask=last)


def _config(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    """(L, BK, BV), fixed by head size: L the largest power of two <= chunk_size in
    [16, 64] (32 for K > 64), BV <= 64."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    c_max = 64 if BK <= 64 else 32
    C = 16
    while C * 2 <= min(chunk_size, c_max):
        C *= 2
    return C, BK, BV


class _MLSTM(first_order.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_i, log_f, c0, n0, m0, scale, eps, chunk_size, plain):
        B, T, H, K = q.shape
        V = v.shape[-1]
        C, BK, BV = _config(K, V, chunk_size)
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        needs_grad = any(ctx.needs_input_grad[:8])
        f32 = dict(dtype=torch.float32, device=q.device)
        h = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
        ct, nt, mt = torch.empty(B, H, K, V, **f32), torch.empty(B, H, K, **f32), \
            torch.empty(B, H, **f32)
        if needs_grad:
            sc, sn, sm = (torch.empty(B, H, N, K, V, **f32), torch.empty(B, H, N, K, **f32),
                          torch.empty(B, H, N, **f32))
        else:
            sc, sn, sm = ct, nt, mt
        prec = "ieee" if q.dtype == torch.float32 else "tf32"
        _mlstm_fwd_kernel[(NV, B * H)](
            q, k, v, log_i, log_f, c0, n0, m0, h, ct, nt, mt, sc, sn, sm,
            T, H, K, V, N, scale, eps, STORE=needs_grad, C=C, BK=BK, BV=BV, PREC=prec,
            num_warps=4)
        if needs_grad:
            # c0, n0, m0 (references, no copies) for `twice`
            ctx.save_for_backward(q, k, v, log_i, log_f, sc, sn, sm, c0, n0, m0)
            ctx.meta = (scale, eps, C, BK, BV, prec, c0.dtype)
        ctx.plain = plain
        ctx.set_materialize_grads(False)
        return h, ct, nt, mt

    @staticmethod
    def twice(ctx, dh, dct, dnt, dmt):  # under create_graph: autograd through the caller's form
        plain, (scale, eps) = ctx.plain, ctx.meta[:2]
        q, k, v, log_i, log_f, _, _, _, c0, n0, m0 = ctx.saved_tensors

        def fn(q, k, v, log_i, log_f, c0, n0, m0):
            h, state = plain(q, k, v, log_i, log_f, scale=scale, initial_state=(c0, n0, m0),
                             eps=eps)
            return (h, *state)
        return (*_triton.replay("_MLSTM", plain, fn, (q, k, v, log_i, log_f, c0, n0, m0),
                                (dh, dct, dnt, dmt), ctx.needs_input_grad[:8]), None, None,
                None, None)

    @staticmethod
    def backward(ctx, dh, dct, dnt, dmt):
        q, k, v, log_i, log_f, sc, sn, sm = ctx.saved_tensors[:8]
        scale, eps, C, BK, BV, prec, sdt = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        N, NV = triton.cdiv(T, C), triton.cdiv(V, BV)
        f32 = dict(dtype=torch.float32, device=q.device)
        z = lambda x, *shape: torch.zeros(*shape, **f32) if x is None else x.contiguous()  # noqa: E731
        dh, dct = z(dh, B, T, H, V), z(dct, B, H, K, V)
        dnt, dmt = z(dnt, B, H, K), z(dmt, B, H)
        dq, dk = torch.empty(NV, B, T, H, K, **f32), torch.empty(NV, B, T, H, K, **f32)
        dv = torch.empty(B, T, H, V, **f32)
        dli, dlf = torch.empty(NV, B, T, H, **f32), torch.empty(NV, B, T, H, **f32)
        dc0 = torch.empty(B, H, K, V, **f32)
        dn0, dm0 = torch.empty(NV, B, H, K, **f32), torch.empty(NV, B, H, **f32)
        _mlstm_bwd_kernel[(NV, B * H)](
            q, k, v, log_i, log_f, sc, sn, sm, dh, dct, dnt, dmt,
            dq, dk, dv, dli, dlf, dc0, dn0, dm0, T, H, K, V, N, B, scale, eps,
            C=C, BK=BK, BV=BV, PREC=prec, num_warps=4)
        return (dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv.to(v.dtype),
                dli.sum(0).to(log_i.dtype), dlf.sum(0).to(log_f.dtype),
                dc0.to(sdt), dn0.sum(0).to(sdt), dm0.sum(0).to(sdt), None, None, None, None)


def mlstm(q, k, v, log_i, log_f, *, scale=None, initial_state=None, eps=1e-6,
          chunk_size: int = 64, plain=None):
    """Chunkwise stabilised mLSTM in Triton (forward and backward); arguments and returns as
    `rnnzoo.ops.chunk.linear.mlstm`.

    q, k: (B, T, H, K); v: (B, T, H, V); log_i (input gate pre-activation), log_f (log
    forget gate): (B, T, H); scale: default K^-0.5; initial_state: (C, n, m) of shapes
    (B, H, K, V), (B, H, K), (B, H), or None (zeros). Returns h (B, T, H, V) in q's dtype and
    the final (C, n, m) in float32. chunk_size picks the kernel's chunk (a power of two in
    [16, 64]).
    plain: the op's PyTorch form (same arguments and returns), replayed by the node's `twice`
    under create_graph=True; None: create_graph raises (the package docstring).
    """
    from rnnzoo.ops.chunk._common import check_mlstm as _mlstm_check
    _mlstm_check(q, k, v, log_i, log_f, initial_state)
    if q.dtype == torch.float64:
        raise TypeError("triton mlstm: float64 is not supported, "
                        "use rnnzoo.ops.chunk.linear.mlstm")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    if initial_state is None:
        z = dict(dtype=torch.float32, device=q.device)
        initial_state = (torch.zeros(B, H, K, V, **z), torch.zeros(B, H, K, **z),
                         torch.zeros(B, H, **z))
    c0, n0, m0 = (s.contiguous() for s in initial_state)
    (q,), (k, v, log_i, log_f), marks = finite_inputs((q,), (k, v, log_i, log_f))  # ops.finite
    h, ct, nt, mt = _MLSTM.apply(q.contiguous(), k.contiguous(), v.contiguous(),
                                 log_i.contiguous(), log_f.contiguous(), c0, n0, m0,
                                 scale, float(eps), chunk_size, plain)
    return poison(h, marks.outputs), poison((ct, nt, mt), marks.state)
