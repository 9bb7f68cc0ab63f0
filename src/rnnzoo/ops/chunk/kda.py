"""Kimi Delta Attention: the gated delta rule with a decay per key channel, chunkwise.

Kimi Linear (Kimi Team 2025, arXiv:2510.26692, eq. 1): per head, with a log-decay vector
g_t <= 0 over the K key channels,

    S_t = (I - beta_t k_t k_t^T) diag(exp g_t) S_{t-1} + beta_t k_t v_t^T,   o_t = scale S_t^T q_t

S: (K, V). A scalar g (the same for every channel) is Gated DeltaNet (ops.chunk.delta).

Chunkwise form (the WY/UT transform of ops.chunk.delta with a vector decay). In a chunk
entered with state S_0, let G_t = sum_{s <= t} g_s (a (K,) vector, inclusive) and write the
update as S_t = diag(e^{g_t}) S_{t-1} + k_t u_t^T with the pseudo-value
u_t = beta_t (v_t - (diag(e^{g_t}) S_{t-1})^T k_t). Unrolling S_{t-1} gives, for all u of the
chunk at once,

    (I + A) U = diag(beta) V - diag(beta) (K o e^G) S_0,   A_ts = beta_t sum_c k_tc k_sc e^{G_tc - G_sc}  (s < t)
    O   = scale ((Q o e^G) S_0 + P U),                     P_ts = sum_c q_tc k_sc e^{G_tc - G_sc}       (s <= t)
    S_C = diag(e^{G_C}) S_0 + (K o e^{G_C - G})^T U

The pair scores A and P carry a decay per channel, so they are no single matrix product.
A chunk is cut into sub-chunks of c steps: blocks below the diagonal are products of
x_t e^{G_t - R} and y_s e^{R - G_s} through the boundary R between the two sub-chunks (both
factors <= 1, the pair factor exp(R_a - E_b) between sub-chunk ends only (m, m, K)); diagonal
blocks are built exactly from exp(G_t - G_s) over their c (c + 1) / 2 pairs s <= t. Every exponent is thus <= 0 whatever the decay: no
overflow, and no value is read back to the host to choose a path.

Non-finite inputs (g = -inf included: give a large finite log-decay to erase a channel):
a step whose k, v, g or beta is not finite makes every output from that step on, and the
final state, NaN, as in the recurrence; a non-finite q only its own output. The chunk form
enters such steps as zeros and marks the outputs afterwards (ops.finite), so that
nothing non-finite reaches an earlier output through a product with a masked zero.

All tensors are (B, T, H, D); states accumulate in float32 (float64 for float64 input).
"""

from __future__ import annotations

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops.chunk.delta import (
    _check,
    _from_chunks,
    _householder_update,
    _initial,
    _to_chunks,
    _unit_lower_inverse,
)
from rnnzoo.ops.finite import finite_inputs, poison

__all__ = ["kda", "kda_recurrent", "kda_step"]


def kda_step(q_t, k_t, v_t, g_t, beta_t, S, scale):
    """One step. q_t, k_t, g_t: (B, H, K); v_t: (B, H, V); beta_t: (B, H); S: (B, H, K, V).
    Returns (o_t (B, H, V), S_t)."""
    S = _householder_update(k_t, v_t, beta_t, S * g_t.exp()[..., None])
    return scale * torch.einsum("bhk,bhkv->bhv", q_t, S), S


def _check_kda(q, k, v, g, beta, initial_state):
    B, T, H, K = q.shape if isinstance(q, torch.Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    _check("kda", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)), g=(g, (B, T, H, K)),
                          beta=(beta, (B, T, H))), initial_state, V)


def kda_recurrent(q, k, v, g, beta, *, scale=None, initial_state=None):
    """Reference loop of `kda` (same arguments, returns)."""
    _check_kda(q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    out = []
    for q_t, k_t, v_t, g_t, b_t in zip(*(t.to(dt).unbind(1) for t in (q, k, v, g, beta))):
        o_t, S = kda_step(q_t, k_t, v_t, g_t, b_t, S, scale)
        out.append(o_t)
    return torch.stack(out, 1).to(q.dtype), S


def kda(q, k, v, g, beta, *, scale=None, initial_state=None, chunk_size=32, subchunk_size=8):
    """Chunkwise KDA: S_t = (I - beta_t k_t k_t^T) diag(exp g_t) S_{t-1} + beta_t k_t v_t^T,
    o_t = scale * S_t^T q_t.

    q, k: (B, T, H, K); v: (B, T, H, V); g: (B, T, H, K) log-decay (<= 0) per key channel;
    beta: (B, T, H) (any real; (0, 2) for negative eigenvalues); scale: default K^-0.5;
    initial_state: (B, H, K, V) or None (zeros). Returns o (B, T, H, V) in q's dtype and the
    final state (B, H, K, V) in float32 (float64 for float64 q).
    """
    _check_kda(q, k, v, g, beta, initial_state)
    positive_int("kda: chunk_size", chunk_size)
    positive_int("kda: subchunk_size", subchunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    out_dtype = q.dtype
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))

    (q,), (k, v, g, beta), marks = finite_inputs((q,), (k, v, g, beta))
    c = subchunk_size
    C = min(chunk_size, -(-T // c) * c)                 # whole sub-chunks when T is short
    if C % c:
        c = C
    o, S = _kda_chunks(q, k, v, g, beta, S, scale, C, c)
    o, S = poison(o, marks.outputs), poison(S, marks.state)
    return o.to(out_dtype), S


def _scatter_pairs(zeros, vals, t_idx, s_idx, c):
    """zeros (..., c c) with vals (..., pairs) written at (t_idx, s_idx) -> (..., c, c)."""
    return zeros.index_copy(-1, t_idx * c + s_idx, vals).unflatten(-1, (c, c))


def _decayed_scores(q, k, G, c: int):
    """The pair scores of a chunk, both from one set of decay factors:

        Akk_ts = sum_c k_tc k_sc exp(G_tc - G_sc)  (s < t),   P_ts = sum_c q_tc k_sc exp(G_tc - G_sc)  (s <= t)

    q, k, G: (..., C, K) with G non-increasing along C and C a multiple of c -> two (..., C, C).
    """
    *lead, C, K = q.shape
    m = C // c
    qs, ks, Gs = (t.reshape(*lead, m, c, K) for t in (q, k, G))
    # Diagonal blocks, exactly: exp(G_t - G_s) for the c (c + 1) / 2 pairs s <= t only.
    t_idx, s_idx = torch.tril_indices(c, c, device=q.device)
    kd = (Gs[..., t_idx, :] - Gs[..., s_idx, :]).exp() * ks[..., s_idx, :]  # (..., m, pairs, K)
    strict = t_idx != s_idx
    zeros = qs.new_zeros(*lead, m, c * c)
    P = _scatter_pairs(zeros, (qs[..., t_idx, :] * kd).sum(-1), t_idx, s_idx, c)
    Akk = _scatter_pairs(zeros, torch.where(strict, (ks[..., t_idx, :] * kd).sum(-1), 0),
                         t_idx, s_idx, c)
    if m == 1:
        return Akk.reshape(*lead, C, C), P.reshape(*lead, C, C)
    # Below the diagonal, sub-chunk a reads sub-chunk b < a through their boundaries:
    # exp(G_t - G_s) = exp(G_t - R_a) exp(R_a - E_b) exp(E_b - G_s), R_a = E_{a-1} the end of
    # sub-chunk a - 1, E_b the end of b; each factor <= 1, and the pair factor is only (m, m, K).
    E = Gs[..., -1, :]                                                    # (..., m, K)
    R = torch.cat([torch.zeros_like(E[..., :1, :]), E[..., :-1, :]], -2)  # (..., m, K)
    below = torch.ones(m, m, dtype=torch.bool, device=q.device).tril(-1)  # b < a
    pair = torch.where(below[..., None], R[..., :, None, :] - E[..., None, :, :],
                       float("-inf")).exp()                               # (..., a, b, K)
    k_in = ks * (E[..., None, :] - Gs).exp()                              # (..., m, c, K)
    eye = torch.eye(m, dtype=torch.bool, device=q.device).view(m, 1, m, 1)
    scores = []
    for x, diag in ((ks, Akk), (qs, P)):
        x_out = x * (Gs - R[..., None, :]).exp()                          # (..., m, c, K)
        xab = x_out[..., :, None, :, :] * pair[..., None, :]              # (..., a, b, c, K)
        off = xab @ k_in[..., None, :, :, :].transpose(-1, -2)            # (..., a, b, c, c)
        full = torch.where(eye, diag.unsqueeze(-2), off.transpose(-3, -2))
        scores.append(full.reshape(*lead, C, C))
    return scores[0], scores[1]


def _kda_chunks(q, k, v, g, beta, S, scale, C, c):
    """The chunkwise solver on clean compute-dtype tensors (see the module docstring).

    Zero padding at the end is exact: k = v = g = beta = 0 leaves the state unchanged."""
    T = q.shape[1]
    q, k, v, g = (_to_chunks(t, C) for t in (q, k, v, g))  # (B, H, N, C, D)
    beta = _to_chunks(beta, C)                             # (B, H, N, C)
    G = g.cumsum(-2)
    Akk, P = _decayed_scores(q, k, G, c)
    A = beta[..., None] * Akk
    Tinv = _unit_lower_inverse(A)                          # (I + A)^{-1}
    U0 = Tinv @ (beta[..., None] * v)                      # U = U0 - W S_0
    W = Tinv @ (beta[..., None] * k * G.exp())
    Qg = q * G.exp()
    G_end = G[..., -1:, :]
    Kd = k * (G_end - G).exp()
    chunk_decay = G_end.transpose(-1, -2).exp()            # (B, H, N, K, 1)

    states, pseudo = [], []
    for u0_n, w_n, kd_n, dec_n in zip(U0.unbind(2), W.unbind(2), Kd.unbind(2),
                                      chunk_decay.unbind(2)):
        states.append(S)
        u = u0_n - w_n @ S
        pseudo.append(u)
        S = S * dec_n + kd_n.transpose(-1, -2) @ u
    o = scale * (Qg @ torch.stack(states, 2) + P @ torch.stack(pseudo, 2))
    return _from_chunks(o, T), S
