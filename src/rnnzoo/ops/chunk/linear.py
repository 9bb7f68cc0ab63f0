"""Gated linear attention and mLSTM: matrix-state recurrences with a decay, chunkwise.

Gated linear attention (GLA, Yang et al. 2024, arXiv:2312.06635) with a decay
that is absent, a scalar per head or a vector per key channel, given in log
space (g = log decay <= 0):

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T          S: (K, V) per head
    o_t = S_t^T (scale * q_t)

and, with a `bonus` u (RWKV-6, Peng et al. 2024, arXiv:2404.05892), the read
before the write with a bonus on the current token:

    o_t = (S_{t-1} + diag(u) k_t v_t^T)^T (scale * q_t),  then  S_t as above.

mLSTM (Beck et al. 2024, xLSTM, arXiv:2405.04517, eqs. 19-27) with an
exponential input gate (pre-activation i~_t = log i_t), a forget gate given as
log f_t (logsigmoid for a sigmoid gate, the pre-activation for an exponential
one) and the max-stabiliser m:

    m_t = max(log f_t + m_{t-1}, i~_t)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i~_t - m_t) k_t v_t^T
    n_t = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(i~_t - m_t) k_t
    h_t = C_t^T q~_t / (max(|n_t^T q~_t|, exp(-m_t)) + eps),   q~ = scale * q

Chunkwise forms (Yang et al. 2024, section 3): the sequence is cut into chunks
of `chunk_size`; inside a chunk the outputs are a masked matrix product whose
decays are cumulative log-decays G relative to the chunk start, and the states
at chunk boundaries follow a short recurrence over chunks. Every exponent is
kept bounded: for scalar decays the (C, C) matrix exp(G_i - G_j) is built in
log space and masked before `exp`. For vector decays the scores are matrix
products of q_i exp(G_i - R) and k_j exp(R - G_j) through a reference point R;
when the log-decay accumulated over a chunk is small (the common case) R is
the chunk start and one matmul does it; otherwise the chunk is cut once more
into sub-chunks (the paper's secondary chunking): blocks below the diagonal go
through the sub-chunk boundary (both factors <= 1), and diagonal blocks are
factorised the same way while their span stays far from overflow, else built
from the exact (c, c, K) log-space tensor.

All functions take (B, T, H, D) tensors and return (o, final_state): o is
(B, T, H, V) in q's dtype; states are float32 (float64 for float64 input).
"""

from __future__ import annotations

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import backend, first_order, flop_count, sequence_parallel
from rnnzoo.ops.chunk._common import causal_decay
from rnnzoo.ops.chunk._common import check_linear as _check
from rnnzoo.ops.chunk._common import check_mlstm as _mlstm_check
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import gla_scan as native_gla
from rnnzoo.ops.native import mlstm_scan as native_mlstm
from rnnzoo.ops.native import ssd_scan as native_ssd

__all__ = [
    "gated_linear_attention", "gated_linear_attention_parallel",
    "gated_linear_attention_recurrent", "mlstm", "mlstm_recurrent", "ssd",
]


def _prepare(q, k, v, g, scale, initial_state):
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    q, k, v = (q.to(dt) if scale == 1 else q.to(dt) * scale), k.to(dt), v.to(dt)  # 1: no pass
    g = torch.zeros(B, T, H, dtype=dt, device=q.device) if g is None else g.to(dt)
    S = (torch.zeros(B, H, K, v.shape[-1], dtype=dt, device=q.device) if initial_state is None
         else initial_state.to(dt))
    return q, k, v, g, S


def gated_linear_attention_recurrent(q, k, v, log_decay=None, *, scale=None, initial_state=None,
                                     bonus=None):
    """The reference loop. q, k: (B, T, H, K); v: (B, T, H, V); log_decay: None, (B, T, H)
    or (B, T, H, K); initial_state: (B, H, K, V); bonus: (H, K) or None. -> (o, S_T)."""
    _check(q, k, v, log_decay, initial_state, bonus)
    out_dtype = q.dtype
    q, k, v, g, S = _prepare(q, k, v, log_decay, scale, initial_state)
    decay = g.exp()
    decay = decay[..., None, None] if decay.dim() == 3 else decay[..., None]
    outs = []
    for q_t, k_t, v_t, decay_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), decay.unbind(1)):
        kv = k_t[..., None] * v_t[..., None, :]  # (B, H, K, V)
        if bonus is None:
            S = decay_t * S + kv
            outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
        else:
            outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S + bonus[..., None] * kv))
            S = decay_t * S + kv
    return torch.stack(outs, 1).to(out_dtype), S


def _gla_loop(q, k, v, g, S0, u, scale):
    """ops.native.gla_scan.gla's arguments (g (B, T, H, K)) to the reference loop: the plain
    form its node's `twice` differentiates."""
    return gated_linear_attention_recurrent(q, k, v, g, scale=scale, initial_state=S0, bonus=u)


def _chunks(x, C):
    """(B, T, H, *D) -> (B, H, N, C, *D), zero-padded at the end to N * C steps; contiguous
    (one copy here, not one in each matrix product that reads it, forward and backward)."""
    B, T = x.shape[:2]
    pad = -T % C
    if pad:
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], 1)
    x = x.view(B, (T + pad) // C, C, *x.shape[2:])
    x = x.permute(0, 3, 1, 2, *range(4, x.dim())) if x.dim() == 5 else x.permute(0, 3, 1, 2)
    return x.contiguous()


def _masked_exp(log_w, mask):
    """exp(log_w) where mask, 0 elsewhere, with no overflow where masked out."""
    return log_w.masked_fill(~mask, float("-inf")).exp()


def _factorise_limit(dtype) -> float:
    """Largest log-decay span over which exp(R - G) * exp(G - R)-style factors stay far from
    overflow and underflow: e^40 ~ 2e17 in float32, e^300 ~ 2e130 in float64."""
    return 300.0 if dtype == torch.float64 else 40.0


def _intra_vector(q, k, Gq, G, strict: bool, c: int, read_values: bool | None = None):
    """Intra-chunk scores A_ij = sum_k q_ik exp(Gq_ik - G_jk) k_jk for j <= i (j < i if strict).

    q, k, Gq, G: (..., C, K) with G the cumulative log-decay from the chunk start -> A: (..., C, C).
    Blocks are factorised through a reference point R (a sub-chunk's start):
    (q_i exp(Gq_i - R)) . (k_j exp(R - G_j)). Below the diagonal both factors are <= 1. On the
    diagonal the k factor is <= exp(span), the log-decay accumulated over the block; when a
    span exceeds `_factorise_limit` the diagonal blocks are built exactly from the (c, c, K)
    log-space tensor instead. When the whole chunk's span is small, one block covers it.
    Choosing among these reads the spans: `read_values` (default: on the CPU only, where a
    read costs no device sync). Without reading, nothing is chosen by value: sub-chunks
    always, and the diagonal blocks exactly (O(T c K) memory instead of O(T K)).
    """
    *lead, C, K = q.shape
    limit = _factorise_limit(q.dtype)
    read = backend.host_readable(q) if read_values is None else read_values
    if C % c or (read and -G[..., -1, :].min().item() < limit):
        c = C
    m = C // c
    qs, ks, Gqs, Gs = (t.reshape(*lead, m, c, K) for t in (q, k, Gq, G))
    R = torch.cat([torch.zeros_like(Gs[..., :1, -1, :]), Gs[..., :-1, -1, :]], -2)  # (..., m, K)
    mask = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
    if read and (R - Gs[..., -1, :]).max().item() < limit:
        q_f = qs * (Gqs - R[..., None, :]).exp()
        k_f = ks * (R[..., None, :] - Gs).exp()
        A_diag = (q_f @ k_f.transpose(-1, -2)) * mask
    else:
        decay = _masked_exp(Gqs[..., :, None, :] - Gs[..., None, :, :], mask[..., None])
        A_diag = torch.einsum("...ik,...ijk,...jk->...ij", qs, decay, ks)  # (..., m, c, c)
    if m == 1:
        return A_diag.reshape(*lead, C, C)
    eye = torch.eye(m, dtype=q.dtype, device=q.device).view(m, 1, m, 1)
    A = A_diag.unsqueeze(-2) * eye  # (..., m, c, m, c)
    R = R[..., 1:, :]  # boundary before sub-chunk a = 1..m-1: (..., m-1, K)
    q_a = qs[..., 1:, :, :] * (Gqs[..., 1:, :, :] - R[..., None, :]).exp()
    below = torch.ones(m - 1, m, dtype=torch.bool, device=q.device).tril()  # b <= a - 1
    k_ab = ks[..., None, :, :, :] * _masked_exp(
        R[..., :, None, None, :] - Gs[..., None, :, :, :], below[:, :, None, None])
    A_off = torch.einsum("...aik,...abjk->...aibj", q_a, k_ab)  # (..., m-1, c, m, c)
    A = A + torch.cat([torch.zeros_like(A[..., :1, :, :, :]), A_off], -4)
    return A.reshape(*lead, C, C)


# -- vector decay, one factorised block per chunk: one autograd Function -------------------------
class _VectorChunk(first_order.Function):
    """Chunkwise vector-decay linear attention (GLA; RWKV-6 with the bonus u) for chunks whose
    log-decay span stays under `_factorise_limit`, with hand-written gradients. Per chunk
    (G: log-decay summed from the chunk start, inclusive, per key channel; Gq = G, or G - g
    with a bonus, whose q reads the state before the decay; E = e^{G_end}):

        qf = q e^{Gq},  kf = k e^{-G},  kd = kf E = k e^{G_end - G}     (elementwise, (C, K))
        A = mask(qf kf^T),   o = A v + qf S,   S' = diag(E) S + kd^T v

    mask keeps j <= i; with a bonus it keeps j < i and puts the bonus q_i u . k_i on the
    diagonal (so A v adds (q u . k) v, and A^T do its gradient in v). With do and dS' (each
    chunk's end-state gradient, from a reverse pass over chunks: dS = qf^T do + diag(E) dS'):

        dA = mask(do v^T),  dv = A^T do + kd dS',  dqf = dA kf + do S^T,
        dkf' = dA^T qf + (v dS'^T) E,   dq = dqf e^{Gq},  dk = dkf' e^{-G}
        dGq = dqf * qf,   dG = -dkf' * kf  (+ the rows of dS' * S' at the chunk end)

    and g's gradient is the reverse cumulative sum of dG + dGq, less dGq with a bonus
    (Gq = G - g); the bonus's own, with ds_i = do_i . v_i (dA's diagonal): dq += ds u k,
    dk += ds u q, du = sum of ds q k. Every (C, C) product is one batched matmul over
    (B, H, N); only the (K, V) state pass loops over chunks. Shapes: q, k, g (B, H, N, C, K); v (B, H, N, C, V);
    S0 (B, H, K, V); u (H, K) or None. -> o (B, H, N, C, V), S_T (B, H, K, V).
    """

    @staticmethod
    def forward(ctx, q, k, v, g, S0, u):
        N = q.shape[2]
        bonus = u is not None
        G = g.cumsum(-2)
        eGq = (G - g).exp_() if bonus else G.exp()
        E = G[..., -1:, :].exp()  # (B, H, N, 1, K)
        eGn = G.neg_().exp_() if bonus else eGq.reciprocal()  # spans < the limit: no overflow
        qf, kf = q * eGq, k * eGn
        kd = kf * E
        A = (qf @ kf.transpose(-1, -2)).tril_(-1 if bonus else 0)  # (B, H, N, C, C)
        qk = None
        if bonus:  # the bonus (q u . k) on A's diagonal: A v then carries it, and A^T do its dv
            qk = q * k
            torch.sum(qk * u[:, None, None, :], -1, out=A.diagonal(0, -2, -1))
        o = A @ v
        updates = kd.transpose(-1, -2) @ v  # (B, H, N, K, V)
        Et = E.transpose(-1, -2)  # (B, H, N, K, 1)
        starts = torch.empty_like(updates)  # the state entering each chunk, written in place
        starts[:, :, 0] = S0
        for n in range(N - 1):
            torch.addcmul(updates[:, :, n], Et[:, :, n], starts[:, :, n], out=starts[:, :, n + 1])
        S = torch.addcmul(updates[:, :, -1], Et[:, :, -1], starts[:, :, -1])
        o += qf @ starts
        ctx.save_for_backward(q, k, v, u, eGq, eGn, E, qf, kf, kd, A, starts, S, qk, g, S0)
        return o, S

    @staticmethod
    def twice(ctx, do, dS_last):
        q, k, v, u = ctx.saved_tensors[:4]
        g, S0 = ctx.saved_tensors[14:]
        return first_order.replay(_vector_chunk_loop, (q, k, v, g, S0, u), (do, dS_last),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, do, dS_last):
        q, k, v, u, eGq, eGn, E, qf, kf, kd, A, starts, S_T, qk = ctx.saved_tensors[:14]
        bonus = u is not None
        do = do.contiguous()
        X = qf.transpose(-1, -2) @ do  # (B, H, N, K, V): each chunk's read of its entering state
        Et = E.transpose(-1, -2)
        dSe = torch.empty_like(starts)  # the gradient of each chunk's end state, in place
        dSe[:, :, -1] = 0 if dS_last is None else dS_last
        for n in range(q.shape[2] - 1, 0, -1):
            torch.addcmul(X[:, :, n], Et[:, :, n], dSe[:, :, n], out=dSe[:, :, n - 1])
        dS = torch.addcmul(X[:, :, 0], Et[:, :, 0], dSe[:, :, 0])
        dA = (do @ v.transpose(-1, -2)).tril_()
        if bonus:  # the diagonal is the bonus's: ds_i = do_i . v_i
            ds = dA.diagonal(0, -2, -1).clone()[..., None]  # (B, H, N, C, 1)
            dA.diagonal(0, -2, -1).zero_()
        dv = (A.transpose(-1, -2) @ do).add_(kd @ dSe)
        dqf = (dA @ kf).add_(do @ starts.transpose(-1, -2))
        dkf = (dA.transpose(-1, -2) @ qf).addcmul_(v @ dSe.transpose(-1, -2), E)
        dq, dk = dqf.mul_(eGq), dkf.mul_(eGn)
        dGq = dq * q  # = dqf * qf
        dG = torch.addcmul(dGq, dk, k, value=-1)  # - dkf' * kf
        ends = torch.cat([starts[:, :, 1:], S_T[:, :, None]], 2)  # each chunk's end state
        dG[..., -1, :] += (dSe * ends).sum(-1)
        dg = dG.flip(-2).cumsum(-2).flip(-2)
        du = None
        if bonus:
            dg -= dGq
            ub = u[:, None, None, :]
            dq.addcmul_(ds, k * ub)
            dk.addcmul_(ds, q * ub)
            du = (ds * qk).sum((0, 2, 3)) if ctx.needs_input_grad[5] else None
        return dq, dk, dv, dg, dS, du


def _vector_chunk_loop(q, k, v, g, S0, u):
    """_VectorChunk's arguments (chunked: (B, H, N, C, *)) through the reference loop: the
    plain form its `twice` differentiates (the zero padding writes nothing: k = 0, g = 0)."""
    B, H, N, C = q.shape[:4]
    o, S = gated_linear_attention_recurrent(
        *(t.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, t.shape[-1]) for t in (q, k, v, g)),
        scale=1, initial_state=S0, bonus=u)
    return o.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4), S


def _vector_chunkwise(q, k, v, g, S, C, bonus):
    """The one-block vector-decay chunk form on prepared inputs (B, T, H, *) -> (o (B, T, H, V),
    S_T), or None when a chunk's log-decay span passes `_factorise_limit` (read on the CPU
    only) and the caller's secondary chunking must take it."""
    if not backend.host_readable(q):
        return None
    gc = _chunks(g, C)  # (B, H, N, C, K)
    if -gc.detach().sum(-2).min().item() >= _factorise_limit(q.dtype):
        return None
    qc, kc, vc = (_chunks(t, C) for t in (q, k, v))
    o, S = _VectorChunk.apply(qc, kc, vc, gc, S, bonus)
    B, T, H, V = v.shape
    return o.permute(0, 2, 3, 1, 4).reshape(B, -1, H, V)[:, :T], S


# -- scalar decay: one autograd Function --------------------------------------------------------
def _pad_time(x, C):
    """x (B, T, ...) zero-padded at the end to a multiple of C steps."""
    pad = -x.shape[1] % C
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], 1) if pad else x


class _ScalarChunk(first_order.Function):
    """Chunkwise scalar-decay linear attention (SSD, retention, none) with q and k shared by
    the R heads of each of G groups, and hand-written gradients. It stores D and A = P * D per
    head for the backward (recomputing them there ran ~1.1x slower on a CPU, where memory is
    not the limit); autograd stored and re-read about twice as many (C, C) tensors. Per chunk, head h (G_h: log-decay summed from the chunk start, inclusive;
    w_h = exp(G_h,end - G_h); D_h = exp(G_h,i - G_h,j) for j <= i; P = q k^T, once per group):

        o_h = (P * D_h) v_h + diag(e^{G_h}) q S_h,    S'_h = e^{G_h,end} S_h + k^T diag(w_h) v_h

    and, with do_h and dS'_h (the end state's gradient, from a reverse pass over chunks),
        dv_h = (P * D_h)^T do_h + diag(w_h) k dS'_h,     dP = sum_h (do_h v_h^T) * D_h
        dq = dP k + sum_h diag(e^{G_h}) do_h S_h^T,      dk = dP^T q + sum_h diag(w_h) v_h dS'_h^T
        dG_h = M 1 - M^T 1 + rows of (e^{G_h} do_h * q S_h) - w_h * rows of (v_h * k dS'_h)
               (+ the end-of-chunk terms), M = (do_h v_h^T) * P * D_h;  dg = reverse cumsum.
    The sums over heads are single products: per-head tensors keep the token layout
    (..., C, R, V), so q S for all heads is one (C, K) x (K, R V) product.
    Shapes: q, k (B, G, N, C, K); v (B, G, N, C, R, V); g (B, G, R, N, C); S0 (B, G, R, K, V).
    -> o (B, G, N, C, R, V), S_T (B, G, R, K, V).
    """

    @staticmethod
    def forward(ctx, q, k, v, g, S0):
        B, G, N, C, R, V = v.shape
        K = q.shape[-1]
        Gc = g.cumsum(-1)
        G_end = Gc[..., -1]  # (B, G, R, N)
        D = causal_decay(Gc)  # (B, G, R, N, C, C)
        A = D * (q @ k.transpose(-1, -2))[:, :, None]
        v_h = v.permute(0, 1, 4, 2, 3, 5).contiguous()  # (B, G, R, N, C, V): once, kept
        o_intra = A @ v_h  # (B, G, R, N, C, V)
        w = (G_end[..., None] - Gc).exp().permute(0, 1, 3, 4, 2)  # (B, G, N, C, R)
        updates = k.transpose(-1, -2) @ (v * w[..., None]).view(B, G, N, C, R * V)
        updates = updates.view(B, G, N, K, R, V)
        decay = G_end.exp().permute(0, 1, 3, 2)[:, :, :, None, :, None]  # (B, G, N, 1, R, 1)
        starts = torch.empty_like(updates)  # each chunk's entering state, (K, R, V)
        S = S0.permute(0, 1, 3, 2, 4)
        for n in range(N):
            starts[:, :, n] = S
            S = decay[:, :, n] * S + updates[:, :, n]
        qS = q @ starts.view(B, G, N, K, R * V)  # (B, G, N, C, R V)
        eG = Gc.exp().permute(0, 1, 3, 4, 2)[..., None]  # (B, G, N, C, R, 1)
        o = (qS.view(B, G, N, C, R, V) * eG).add_(o_intra.permute(0, 1, 3, 4, 2, 5))
        ctx.save_for_backward(q, k, v, Gc, starts, qS, D, A, v_h, g, S0)
        return o, S.permute(0, 1, 3, 2, 4).contiguous()

    @staticmethod
    def twice(ctx, do, dS_last):
        q, k, v = ctx.saved_tensors[:3]
        return first_order.replay(_scalar_chunk_loop, (q, k, v, *ctx.saved_tensors[9:]),
                                  (do, dS_last), ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, do, dS_last):
        q, k, v, Gc, starts = ctx.saved_tensors[:5]
        do = do.contiguous()
        B, G, N, C, R, V = v.shape
        K = q.shape[-1]
        G_end = Gc[..., -1]
        decay = G_end.exp().permute(0, 1, 3, 2)[:, :, :, None, :, None]
        w = (G_end[..., None] - Gc).exp().permute(0, 1, 3, 4, 2)[..., None]  # (B, G, N, C, R, 1)
        do_e = (do * Gc.exp().permute(0, 1, 3, 4, 2)[..., None]).view(B, G, N, C, R * V)
        X = (q.transpose(-1, -2) @ do_e).view(B, G, N, K, R, V)  # the state reads' gradient
        dSe = torch.empty_like(starts)  # gradient of each chunk's end state
        dS = (torch.zeros_like(starts[:, :, 0]) if dS_last is None
              else dS_last.permute(0, 1, 3, 2, 4))
        for n in reversed(range(N)):
            dSe[:, :, n] = dS
            dS = decay[:, :, n] * dS + X[:, :, n]
        dSe_m, starts_m = dSe.view(B, G, N, K, R * V), starts.view(B, G, N, K, R * V)
        qS, D, A, v_h = ctx.saved_tensors[5:9]
        # head-major copies once: a permuted operand is copied by every product that reads it
        do_h = do.permute(0, 1, 4, 2, 3, 5).contiguous()  # (B, G, R, N, C, V)
        dA = do_h @ v_h.transpose(-1, -2)
        kdS = (k @ dSe_m).view(B, G, N, C, R, V)
        dv = (A.transpose(-1, -2) @ do_h).permute(0, 1, 3, 4, 2, 5)
        dv = dv + w * kdS
        dAD = dA * D
        dP = dAD[:, :, 0] if R == 1 else dAD.sum(2)
        vw = (v * w).view(B, G, N, C, R * V)
        dq = dP @ k + do_e @ starts_m.transpose(-1, -2)
        dk = dP.transpose(-1, -2) @ q + vw @ dSe_m.transpose(-1, -2)
        dg = None
        if ctx.needs_input_grad[3]:
            M = dA.mul_(A)  # (do v^T) * D * P
            dG = M.sum(-1) - M.sum(-2)  # (B, G, R, N, C)
            del M
            wdw = (vw * kdS.view(B, G, N, C, R * V)).view(B, G, N, C, R, V).sum(-1)
            tok = (do_e * qS).view(B, G, N, C, R, V).sum(-1) - wdw  # (B, G, N, C, R)
            dG += tok.permute(0, 1, 4, 2, 3)
            end = wdw.sum(3) + decay[:, :, :, 0, :, 0] * (dSe * starts).sum((3, 5))  # (B, G, N, R)
            dG[..., -1] += end.permute(0, 1, 3, 2)
            dg = dG.flip(-1).cumsum(-1).flip(-1)
        return dq, dk, dv, dg, dS.permute(0, 1, 3, 2, 4)


def _scalar_chunk_loop(q, k, v, g, S0):
    """_ScalarChunk's arguments (chunked, heads in groups) through the reference loop: the plain
    form its `twice` differentiates (the zero padding writes nothing: k = 0, g = 0)."""
    B, G, N, C, R, V = v.shape
    K = q.shape[-1]
    qh, kh = (t.permute(0, 2, 3, 1, 4).reshape(B, N * C, G, K).repeat_interleave(R, 2)
              for t in (q, k))
    o, S = gated_linear_attention_recurrent(
        qh, kh, v.permute(0, 2, 3, 1, 4, 5).reshape(B, N * C, G * R, V),
        g.permute(0, 3, 4, 1, 2).reshape(B, N * C, G * R), scale=1,
        initial_state=S0.reshape(B, G * R, K, V))
    return o.view(B, N, C, G, R, V).permute(0, 3, 1, 2, 4, 5), S.view(B, G, R, K, V)


def _ssd_loop(q, k, v, g, S0, d):
    """ops.native.ssd_scan.ssd's arguments (q scaled; q, k per group) through the reference
    loop: the plain form its node's `twice` differentiates."""
    R = v.shape[2] // q.shape[2]
    o, S = gated_linear_attention_recurrent(q.repeat_interleave(R, 2), k.repeat_interleave(R, 2),
                                            v, g, scale=1, initial_state=S0)
    return (o if d is None else torch.addcmul(o, d[..., None], v)), S


def _scalar_chunkwise(q, k, v, g, S, C):
    """The scalar-decay chunkwise form on prepared inputs: q, k (B, T, G, K) shared by the
    heads of each group, v (B, T, H, V), g (B, T, H), S (B, H, K, V) -> (o (B, T, H, V), S_T)."""
    B, T, G, K = q.shape
    H, V = v.shape[2], v.shape[3]
    R = H // G
    qc, kc = _chunks(q, C), _chunks(k, C)  # (B, G, N, C, K)
    vc = _pad_time(v, C).view(B, -1, C, G, R, V).permute(0, 3, 1, 2, 4, 5).contiguous()
    gc = _chunks(g, C).view(B, G, R, -1, C)
    o, S = _ScalarChunk.apply(qc, kc, vc, gc, S.view(B, G, R, K, V))
    o = o.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, H, V)[:, :T]
    return o, S.reshape(B, H, K, V)


def gated_linear_attention(q, k, v, log_decay=None, *, scale=None, initial_state=None,
                           bonus=None, chunk_size: int = 64, subchunk_size: int = 16):
    """Chunkwise gated linear attention; same arguments and returns as the recurrent form.

    Cost O(T C (K + V)) for the intra-chunk products plus T/C steps of a (K, V) recurrence.
    On CUDA (when triton imports; `ops.backend`) the Triton kernel
    `ops.triton.chunk_linear` runs instead, for every dtype but float64; on the CPU in
    float32/float64 (`backend.use_native`) a vector decay or a bonus runs as the C recurrence
    `ops.native.gla_scan` (its lead over the chunk form: docs/cpu-speed.md).
    A non-finite input at step t makes outputs from t on NaN, never earlier ones (ops.finite);
    the C recurrence needs no marks: as the reference loop, its outputs from t on may be
    non-finite, never earlier ones.
    """
    _check(q, k, v, log_decay, initial_state, bonus)
    positive_int("chunk_size", chunk_size)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 (ops/sequence_parallel.py)
        return sequence_parallel.lasp2(gated_linear_attention, q, k, v, log_decay, scale=scale,
                                       initial_state=initial_state, bonus=bonus,
                                       chunk_size=chunk_size, subchunk_size=subchunk_size)
    if q.dtype != torch.float64 and backend.use_triton(q, k, v, log_decay, initial_state, bonus):
        from rnnzoo.ops.triton import chunk_linear
        return chunk_linear.gated_linear_attention(
            q, k, v, log_decay, scale=scale, initial_state=initial_state, bonus=bonus,
            chunk_size=chunk_size, subchunk_size=subchunk_size,
            plain=gated_linear_attention_recurrent)  # its create_graph form
    out_dtype = q.dtype
    vector = log_decay is not None and log_decay.dim() == 4
    # flop_count.native: bench.layer_flops counts this path (gla_scan books its FLOPs)
    lib = (native_gla.load() if (vector or bonus is not None)
           and flop_count.native(q, k, v, log_decay, initial_state, bonus) else None)
    if lib is not None:  # the recurrence in C, state in cache (ops.native.gla_scan); a
        # recurrence never carries a step into an earlier output: no finite_inputs marks
        q, k, v, g, S = _prepare(q, k, v, log_decay, 1, initial_state)  # the kernel scales q
        u = None if bonus is None else bonus.to(q.dtype)
        o, S = native_gla.gla(lib, q, k, v, g if vector else g[..., None].expand(q.shape), S, u,
                              q.shape[-1] ** -0.5 if scale is None else scale, _gla_loop)
        return o.to(out_dtype), S
    (q,), (k, v, log_decay), marks = finite_inputs((q,), (k, v, log_decay))
    B, T, H, K = q.shape
    q, k, v, g, S = _prepare(q, k, v, log_decay, scale, initial_state)
    C = min(chunk_size, T)
    if not vector and bonus is None:
        o, S = _scalar_chunkwise(q, k, v, g, S, C)
        return poison(o, marks.outputs).to(out_dtype), poison(S, marks.state)
    if vector:
        fast = _vector_chunkwise(q, k, v, g, S, C, bonus)
        if fast is not None:
            return poison(fast[0], marks.outputs).to(out_dtype), poison(fast[1], marks.state)
    qc, kc, vc, gc = (_chunks(t, C) for t in (q, k, v, g))  # (B, H, N, C, ...)
    G = gc.cumsum(3)  # log-decay from the chunk start, inclusive
    Gq = G - gc if bonus is not None else G  # with a bonus, q reads the state before the decay
    G_end = G[:, :, :, -1:]  # (B, H, N, 1[, K])
    if vector:
        A = _intra_vector(qc, kc, Gq, G, bonus is not None, subchunk_size)
        q_inter = qc * Gq.exp()
        k_state = kc * (G_end - G).exp()
        chunk_decay = G_end.exp().transpose(-1, -2)  # (B, H, N, K, 1)
    else:
        mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(
            -1 if bonus is not None else 0)
        A = (qc @ kc.transpose(-1, -2)) * _masked_exp(Gq[..., :, None] - G[..., None, :], mask)
        q_inter = qc * Gq.exp()[..., None]
        k_state = kc * (G_end - G).exp()[..., None]
        chunk_decay = G_end.exp()[..., None]  # (B, H, N, 1, 1)
    o = A @ vc
    if bonus is not None:
        o = o + (qc * bonus[:, None, None, :] * kc).sum(-1, keepdim=True) * vc
    updates = k_state.transpose(-1, -2) @ vc  # (B, H, N, K, V)
    starts = []  # unbind, not [:, :, n]: its backward is one stack, not N zero-filled copies
    for decay_n, update_n in zip(chunk_decay.unbind(2), updates.unbind(2)):
        starts.append(S)
        S = decay_n * S + update_n
    o = o + q_inter @ torch.stack(starts, 2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, -1, H, v.shape[-1])[:, :T]
    return poison(o, marks.outputs).to(out_dtype), poison(S, marks.state)


def ssd(q, k, v, log_decay, *, scale=None, initial_state=None, chunk_size: int = 64, diag=None,
        finite_qk: bool = False):
    """Chunkwise scalar-decay linear attention with q and k shared by groups of heads (Mamba-2's
    SSD with n_groups, C = q, B = k): q, k (B, T, G, K), v (B, T, H, V) with H a multiple of G
    (head h reads group h // (H / G)), log_decay (B, T, H); initial_state (B, H, K, V);
    diag (B, T, H) or None: o_t += diag_t v_t (a same-step term; mamba3's correction).
    -> (o (B, T, H, V), S_T). Equal to `gated_linear_attention` on q, k repeated to the heads;
    the score product q k^T and its gradients are computed once per group. On the CPU in
    float32/float64 (`backend.use_native`) the C recurrence `ops.native.ssd_scan` runs instead
    (diag inside it). finite_qk: the caller knows every entry of q and k is finite (mamba3's
    qk kernel sums them as it writes them); the C path's finiteness check (one host read) then
    reads v and log_decay only.
    """
    B, T, G, K = q.shape
    if v.dim() != 4 or v.shape[:2] != (B, T) or v.shape[2] % G or k.shape != q.shape:
        raise ValueError(f"ssd: q, k must be (B, T, G, K) and v (B, T, H, V) with H a multiple "
                         f"of G; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    H, V = v.shape[2:]
    if log_decay.shape != (B, T, H):
        raise ValueError(f"ssd: log_decay must be (B, T, H) = {(B, T, H)}, "
                         f"got {tuple(log_decay.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(f"ssd: initial_state must be (B, H, K, V) = {(B, H, K, V)}, "
                         f"got {tuple(initial_state.shape)}")
    heads = lambda t: t.repeat_interleave(H // G, 2)  # noqa: E731
    positive_int("chunk_size", chunk_size)
    if diag is not None and diag.shape != (B, T, H):
        raise ValueError(f"ssd: diag must be (B, T, H) = {(B, T, H)}, got {tuple(diag.shape)}")

    def plus_diag(o):  # the paths without the term inside
        return o if diag is None else torch.addcmul(o, diag[..., None].to(o.dtype), v.to(o.dtype))
    if sequence_parallel.active() or (q.dtype != torch.float64 and backend.use_triton(
            q, k, v, log_decay, initial_state)):
        o, S = gated_linear_attention(heads(q), heads(k), v, log_decay, scale=scale,
                                      initial_state=initial_state, chunk_size=chunk_size)
        return plus_diag(o), S
    out_dtype = q.dtype
    S0 = (torch.zeros(B, H, K, V, dtype=compute_dtype(q), device=q.device)
          if initial_state is None else initial_state)
    # flop_count.native: bench.layer_flops counts this path (ssd_scan books its FLOPs)
    if flop_count.native(q, k, v, log_decay, S0):
        # the C recurrence on the CPU: no zeroed copies and NaN marks unless some step of the
        # inputs is not finite (one host read, ops.finite.clean_inputs)
        if finite_qk:  # q and k need no cleaning and give no marks
            _, (v, log_decay), marks = clean_inputs((), (v, log_decay))
        else:
            (q,), (k, v, log_decay), marks = clean_inputs((q,), (k, v, log_decay))
    else:
        (q,), (k, v, log_decay), marks = finite_inputs((q,), (k, v, log_decay))
    q, k, v, g, S = _prepare(q, k, v, log_decay, scale, S0)
    lib = native_ssd.load() if flop_count.native(q, k, v, g, S, diag) else None
    if lib is not None:  # the recurrence in C, state in cache (ops.native.ssd_scan)
        o, S = native_ssd.ssd(lib, q, k, v, g, S, diag, _ssd_loop)
    else:
        o, S = _scalar_chunkwise(q, k, v, g, S, min(chunk_size, T))
        o = plus_diag(o)
    o, S = marked(o, S, marks)
    return o.to(out_dtype), S


def gated_linear_attention_parallel(q, k, v, log_decay=None, *, scale=None, initial_state=None,
                                    bonus=None):
    """The quadratic (attention-like) form: o = (Q K^T * D) V with D_ij = exp(G_i - G_j),
    j <= i, plus the initial state's contribution. Scalar or no decay only: a vector decay
    would need a (T, T, K) tensor. It is the chunkwise form with one chunk of length T."""
    if log_decay is not None and log_decay.dim() == 4:
        raise ValueError("gated_linear_attention_parallel takes no decay or a scalar decay per "
                         f"head (B, T, H), got log_decay of shape {tuple(log_decay.shape)}")
    return gated_linear_attention(q, k, v, log_decay, scale=scale, initial_state=initial_state,
                                  bonus=bonus, chunk_size=q.shape[1])


# -- mLSTM ------------------------------------------------------------------------------------
def _mlstm_prepare(q, k, v, log_i, log_f, scale, initial_state):
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    q = q.to(dt) if scale == 1 else q.to(dt) * scale  # scale 1: q scaled by the caller
    k, v, log_i, log_f = k.to(dt), v.to(dt), log_i.to(dt), log_f.to(dt)
    if initial_state is None:
        z = q.new_zeros
        initial_state = (z(B, H, K, v.shape[-1]), z(B, H, K), z(B, H))
    return q, k, v, log_i, log_f, tuple(s.to(dt) for s in initial_state)


def mlstm_recurrent(q, k, v, log_i, log_f, *, scale=None, initial_state=None, eps=1e-6):
    """The reference loop. q, k: (B, T, H, K); v: (B, T, H, V); log_i (input gate
    pre-activation), log_f (log forget gate): (B, T, H); initial_state: (C, n, m) of shapes
    (B, H, K, V), (B, H, K), (B, H) (zeros when None, as in xLSTM). -> (h, (C, n, m))."""
    _mlstm_check(q, k, v, log_i, log_f, initial_state)
    out_dtype = q.dtype
    q, k, v, log_i, log_f, (C, n, m) = _mlstm_prepare(q, k, v, log_i, log_f, scale, initial_state)
    outs = []
    for q_t, k_t, v_t, log_i_t, log_f_t in zip(*(t.unbind(1) for t in (q, k, v, log_i, log_f))):
        m_new = torch.maximum(log_f_t + m, log_i_t)
        f = (log_f_t + m - m_new)[..., None]
        i = (log_i_t - m_new)[..., None]
        C = f[..., None].exp() * C + i[..., None].exp() * k_t[..., None] * v_t[..., None, :]
        n = f.exp() * n + i.exp() * k_t
        m = m_new
        num = torch.einsum("bhk,bhkv->bhv", q_t, C)
        den = torch.maximum((q_t * n).sum(-1).abs(), (-m).exp())[..., None] + eps
        outs.append(num / den)
    return torch.stack(outs, 1).to(out_dtype), (C, n, m)


def _mlstm_gates_loop(q, k, log_i, log_f, n0, m0, eps):
    """ops.native.mlstm_scan's gates pass in PyTorch, step by step (`mlstm_recurrent`'s
    m and n, its memory left to the SSD): m_t = max(lf_t + m_{t-1}, li_t), g_t = lf_t +
    m_{t-1} - m_t, kp_t = e^(li_t - m_t) k_t, n_t = e^(g_t) n_{t-1} + kp_t, qs_t = q_t /
    (max(|q_t . n_t|, e^-m_t) + eps): the plain form its nodes' `twice` differentiate.
    q (scaled), k (B, T, H, K); log_i, log_f (B, T, H); n0 (B, H, K); m0 (B, H).
    -> (g, kp, qs, n_T, m_T)."""
    n, m, gs, kps, qss = n0, m0, [], [], []
    for q_t, k_t, li_t, lf_t in zip(*(t.unbind(1) for t in (q, k, log_i, log_f))):
        m_new = torch.maximum(lf_t + m, li_t)
        g = lf_t + m - m_new
        kp = (li_t - m_new).exp()[..., None] * k_t
        n = g.exp()[..., None] * n + kp
        den = torch.maximum((q_t * n).sum(-1).abs(), (-m_new).exp())[..., None] + eps
        gs.append(g)
        kps.append(kp)
        qss.append(q_t / den)
        m = m_new
    return torch.stack(gs, 1), torch.stack(kps, 1), torch.stack(qss, 1), n, m


def mlstm(q, k, v, log_i, log_f, *, scale=None, initial_state=None, eps=1e-6,
          chunk_size: int = 64, finite: bool = False):
    """Chunkwise mLSTM, equal to `mlstm_recurrent` (same arguments and returns; finite=True:
    the caller has found q, k, v, log_i and log_f all finite, and the C path skips its own
    check, ops.finite.clean_inputs' sums).

    With F the log forget gates summed from the chunk start (inclusive) and m0 the
    stabiliser entering the chunk, token j reaches row i >= j with log weight
    W_ij = F_i - F_j + i~_j and the entering state with F_i + m0; the recurrent
    stabiliser is exactly m_i = max(F_i + m0, max_j W_ij), so the outputs are computed
    with the same m as the loop. States at chunk ends follow a loop over chunks.
    On CUDA the Triton kernel `ops.triton.chunk_mlstm` runs instead (not for float64); on the
    CPU in float32/float64 (`backend.use_native`) the C recurrence `ops.native.mlstm_scan`.
    A non-finite input at step t makes outputs from t on NaN, never earlier ones (ops.finite).
    """
    _mlstm_check(q, k, v, log_i, log_f, initial_state)
    positive_int("chunk_size", chunk_size)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 with a max-plus fold
        return sequence_parallel.mlstm_lasp2(mlstm, q, k, v, log_i, log_f, scale=scale,
                                             initial_state=initial_state, eps=eps,
                                             chunk_size=chunk_size)
    if q.dtype != torch.float64 and backend.use_triton(q, k, v, log_i, log_f,
                                                       *(initial_state or ())):
        from rnnzoo.ops.triton import chunk_mlstm
        return chunk_mlstm.mlstm(q, k, v, log_i, log_f, scale=scale,
                                 initial_state=initial_state, eps=eps, chunk_size=chunk_size,
                                 plain=mlstm_recurrent)  # its create_graph form
    out_dtype = q.dtype
    # flop_count.native: bench.layer_flops counts this path (its memory is ssd_scan's, which
    # books its FLOPs; the gates' pass is K numbers a step)
    native = flop_count.native(q, k, v, log_i, log_f, *(initial_state or ()))
    # the C recurrence: no zeroed copies and NaN marks unless some step is not finite
    if native and finite:
        marks = None
    else:
        (q,), (k, v, log_i, log_f), marks = (clean_inputs if native else finite_inputs)(
            (q,), (k, v, log_i, log_f))
    B, T, H, K = q.shape
    q, k, v, log_i, log_f, (Cs, ns, ms) = _mlstm_prepare(q, k, v, log_i, log_f, scale,
                                                         initial_state)
    lib = native_mlstm.load() if flop_count.native(q, k, v, log_i, log_f, Cs, ns, ms) else None
    if lib is not None:  # the recurrence in C, memory in cache (ops.native.mlstm_scan)
        h, state = marked(*native_mlstm.mlstm(lib, q, k, v, log_i, log_f, (Cs, ns, ms), eps,
                                              plain=(_mlstm_gates_loop, _ssd_loop)), marks)
        return h.to(out_dtype), state
    L = min(chunk_size, T)
    pad = -T % L
    if pad:  # padded steps: forget gate 1, input gate 0 (log -inf), k = v = 0: no effect
        log_i = torch.cat([log_i, log_i.new_full((B, pad, H), float("-inf"))], 1)
    qc, kc, vc, ic, fc = (_chunks(t, L) for t in (q, k, v, log_i, log_f))  # (B, H, N, L, ...)
    F = fc.cumsum(3)
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    W = (F[..., :, None] + (ic - F)[..., None, :]).masked_fill(~mask, float("-inf"))
    W_end = W[..., -1, :]  # (B, H, N, L): log weight of each token in the chunk-end state
    m_local = W_end.max(-1).values  # (B, H, N)
    # each chunk's own contribution to its end state, stabilised by its own max m_local (all
    # chunks in one product); the loop rescales it by exp(m_local - m_new) <= 1
    k_end = kc * (W_end - m_local[..., None]).exp()[..., None]  # (B, H, N, L, K)
    updates, n_updates = k_end.transpose(-1, -2) @ vc, k_end.sum(-2)
    starts = []  # unbind, not [:, :, c]: its backward is one stack, not N zero-filled copies
    per_chunk = (t.unbind(2) for t in (F[..., -1], m_local, updates, n_updates))
    for F_end, m_loc, update, n_update in zip(*per_chunk):
        starts.append((Cs, ns, ms))
        m_new = torch.maximum(F_end + ms, m_loc)
        decay, scale = (F_end + ms - m_new).exp(), (m_loc - m_new).exp()
        Cs = decay[..., None, None] * Cs + scale[..., None, None] * update
        ns = decay[..., None] * ns + scale[..., None] * n_update
        ms = m_new
    C0, n0, m0 = (torch.stack(s, 2) for s in zip(*starts))  # (B, H, N, ...)
    inter_log = F + m0[..., None]  # (B, H, N, L)
    m_row = torch.maximum(inter_log, W.max(-1).values)
    D = (W - m_row[..., None]).exp()
    scores = (qc @ kc.transpose(-1, -2)) * D  # (B, H, N, L, L)
    q_inter = qc * (inter_log - m_row).exp()[..., None]
    num = scores @ vc + q_inter @ C0
    den = scores.sum(-1) + (q_inter * n0[:, :, :, None, :]).sum(-1)
    h = num * (torch.maximum(den.abs(), (-m_row).exp()) + eps).reciprocal()[..., None]
    h = h.permute(0, 2, 3, 1, 4).reshape(B, -1, H, v.shape[-1])[:, :T]
    h, state = marked(h, (Cs, ns, ms), marks)
    return h.to(out_dtype), state
