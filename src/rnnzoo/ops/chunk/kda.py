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

The pair scores A and P carry a decay per channel, so they are no single matrix product:
each goes through a reference point R, (x_t e^{G_t - R}) . (k_s e^{R - G_s})
(`_decayed_scores`). On the CPU, where reading a value costs no device sync, the decay
a chunk accumulates is read: while it stays far from overflow (ops.chunk.linear's
factorising limit) R is the chunk start and one product per chunk gives the scores.
Otherwise the chunk is cut into sub-chunks of c steps: blocks below the diagonal go through
the sub-chunk boundaries (every factor <= 1, the pair factor exp(R_a - E_b) between
sub-chunk ends only (m, m, K)); diagonal blocks are factorised the same way while a
sub-chunk's span is small, else (and always off the CPU) built exactly from exp(G_t - G_s)
over their (c, c) pairs, masked before the exponential. No exponent can overflow.
The solve and the state pass are ops.chunk._common's `wy_chunks`, shared with
ops.erase_delta (KDA is its erase key beta k with value beta v).

Non-finite inputs (g = -inf included: give a large finite log-decay to erase a channel):
a step whose k, v, g or beta is not finite makes every output from that step on, and the
final state, NaN, as in the recurrence; a non-finite q only its own output. The chunk form
enters such steps as zeros and marks the outputs afterwards (ops.finite), so that
nothing non-finite reaches an earlier output through a product with a masked zero.

All tensors are (B, T, H, D); states accumulate in float32 (float64 for float64 input).
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import backend, flop_count, sequence_parallel
from rnnzoo.ops.chunk._common import to_chunks, wy_chunks
from rnnzoo.ops.chunk.delta import CPU_CHUNK, _check, _householder_update, _initial
from rnnzoo.ops.chunk.linear import _factorise_limit
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import vector_delta as native_vector

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
    final state (B, H, K, V) in float32 (float64 for float64 q). On a CPU, float32 or float64
    in one dtype, the recurrence in C runs instead (`ops.native.vector_delta`, erase key
    beta k e^g and value beta v); otherwise chunks of at most ops.chunk.delta's `CPU_CHUNK`
    steps there (the result is the same for any chunk size).
    """
    _check_kda(q, k, v, g, beta, initial_state)
    positive_int("kda: chunk_size", chunk_size)
    positive_int("kda: subchunk_size", subchunk_size)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 (ops/sequence_parallel.py)
        return sequence_parallel.lasp2(kda, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                       chunk_size=chunk_size, subchunk_size=subchunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    out_dtype = q.dtype
    # flop_count.native: bench.layer_flops counts this path (vector_delta books its FLOPs)
    lib = native_vector.load() if flop_count.native(q, k, v, g, beta, S) else None
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))

    if lib is not None:  # the recurrence in C (ops.native.vector_delta): erase key beta k e^g
        (q,), (k, v, g, beta), marks = clean_inputs((q,), (k, v, g, beta))
        b = beta[..., None]
        o, S = native_vector.vector_delta(lib, q, g, k, b * v, b * k, None, S, scale, after=True,
                                          plain=erase_form(scale, chunk_size, subchunk_size))
        o, S = marked(o, S, marks)
        return o.to(out_dtype), S
    (q,), (k, v, g, beta), marks = finite_inputs((q,), (k, v, g, beta))
    o, S = _kda_chunks(q, k, v, g, beta, S, scale, *chunk_sizes(q, chunk_size, subchunk_size))
    o, S = poison(o, marks.outputs), poison(S, marks.state)
    return o.to(out_dtype), S


def chunk_sizes(q, chunk_size, subchunk_size):
    """(C, c): the chunk and sub-chunk of the vector-decay chunk form for q (B, T, ...): on a
    CPU chunks of at most ops.chunk.delta's measured `CPU_CHUNK`, whole sub-chunks when T is
    short."""
    T, c = q.shape[1], subchunk_size
    if q.device.type == "cpu":                          # ops.chunk.delta's measured CPU chunk
        chunk_size = min(chunk_size, CPU_CHUNK)
    C = min(chunk_size, -(-T // c) * c)                 # whole sub-chunks when T is short
    return C, (C if C % c else c)


def _erase_after(r, w, k, v, a, b, S0, *, scale, chunk_size, subchunk_size):
    return vector_decay_chunks(r, k, v, w, a, S0, scale, *chunk_sizes(r, chunk_size, subchunk_size))


def erase_form(scale, chunk_size, subchunk_size):
    """The plain form ops.native.vector_delta's node differentiates under create_graph for an
    erase key after a decay per key channel (b None, after=True: KDA, ops.erase_delta):
    plain(r, w, k, v, a, b, S0) -> (o, S_T), `vector_decay_chunks` with a the erase key."""
    return functools.partial(_erase_after, scale=scale, chunk_size=chunk_size,
                             subchunk_size=subchunk_size)


def _decayed_scores(xs, k, G, c: int):
    """The decayed pair scores of a chunk against its keys, one matrix per x of xs:

        X_ts = sum_c x_tc k_sc exp(G_tc - G_sc)   (s <= t; 0 above the diagonal)

    xs: tensors (..., C, K); k, G: (..., C, K) with G non-increasing along C and C a multiple
    of c -> a list of (..., C, C). Each pair factor goes through a reference point R:
    (x_t e^{G_t - R}) . (k_s e^{R - G_s}). Below the diagonal blocks of sub-chunks of c steps,
    R is the boundary before the row's sub-chunk and the column's factor is split once more,
    e^{R_a - E_b} e^{E_b - G_s} through the column sub-chunk's end E_b: every factor <= 1.
    On the diagonal blocks R is the sub-chunk's start, so the key factor is at most
    e^{span} with span the log-decay the sub-chunk accumulates; on the CPU (where reading a
    value costs no device sync) the spans are read and, while they stay below
    ops.chunk.linear's factorising limit, the diagonal blocks are those products (and one
    block covers the whole chunk when its span is that small); otherwise, and always off
    the CPU, they are built exactly from exp(G_t - G_s) over the (c, c, K) pairs, masked
    before the exponential. No exponent can overflow on either path.
    """
    *lead, C, K = k.shape
    limit = _factorise_limit(k.dtype)
    read = backend.host_readable(k)
    if read and -G[..., -1, :].min().item() < limit:
        c = C
    m = C // c
    xs = [x.reshape(*lead, m, c, K) for x in xs]
    ks, Gs = k.reshape(*lead, m, c, K), G.reshape(*lead, m, c, K)
    E = Gs[..., -1, :]                                                    # (..., m, K) ends
    R = torch.cat([torch.zeros_like(E[..., :1, :]), E[..., :-1, :]], -2)  # (..., m, K) starts
    causal = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    out_f = (Gs - R[..., None, :]).exp()                                  # e^{G_t - R_a} <= 1
    x_out = [x * out_f for x in xs]
    if read and (R - E).max().item() < limit:
        k_f = ks * (R[..., None, :] - Gs).exp()
        diag = [(x @ k_f.transpose(-1, -2)).masked_fill(~causal, 0) for x in x_out]
    else:
        kd = (Gs[..., :, None, :] - Gs[..., None, :, :]).masked_fill(
            ~causal[..., None], float("-inf")).exp() * ks[..., None, :, :]  # (..., m, t, s, K)
        diag = [(x[..., :, None, :] * kd).sum(-1) for x in xs]
    if m == 1:
        return [d.reshape(*lead, C, C) for d in diag]
    # Sub-chunk a reads sub-chunk b < a: the pair factor e^{R_a - E_b} is 0 for b >= a, so
    # one product (c, K) @ (K, m c) a sub-chunk gives its row of blocks, zero from the
    # diagonal block on.
    below = torch.ones(m, m, dtype=torch.bool, device=k.device).tril(-1)  # b < a
    pair = (R[..., :, None, :] - E[..., None, :, :]).masked_fill(
        ~below[..., None], float("-inf")).exp()                           # (..., a, b, K)
    k_in = ks * (E[..., None, :] - Gs).exp()                              # (..., b, c, K)
    Y = (pair[..., None, :] * k_in[..., None, :, :, :]).flatten(-3, -2)   # (..., a, b c, K)
    eye = torch.eye(m, dtype=k.dtype, device=k.device).view(m, 1, m, 1)
    return [((x @ Y.transpose(-1, -2)).unflatten(-1, (m, c)) + d[..., None, :] * eye)
            .reshape(*lead, C, C) for x, d in zip(x_out, diag)]


def _kda_chunks(q, k, v, g, beta, S, scale, C, c):
    """The chunkwise solver on clean compute-dtype tensors (see the module docstring): the
    erase-key solver of ops.erase_delta with erase key beta k and value beta v.

    Zero padding at the end is exact: k = v = g = beta = 0 leaves the state unchanged."""
    return vector_decay_chunks(q, k, beta[..., None] * v, g, beta[..., None] * k, S, scale, C, c)


def vector_decay_chunks(q, k, v, g, p, S, scale, C, c):
    """S_t = (I - k_t p_t^T) diag(e^{g_t}) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t chunkwise
    (ops.erase_delta's docstring) on clean compute-dtype (B, T, H, D) tensors; C a multiple
    of c. Returns (o (B, T, H, V), final state)."""
    T = q.shape[1]
    q, k, v, g, p = (to_chunks(t, C) for t in (q, k, v, g, p))  # (B, H, N, C, D)
    G = g.cumsum(-2)
    eG, G_end = G.exp(), G[..., -1:, :]
    p_in, q_in = p * eG, q * eG
    if backend.host_readable(k) and -G_end.min().item() < _factorise_limit(k.dtype):
        # Every chunk's span is small: the whole chunk factorises through its start (as in
        # _decayed_scores with one block), and p e^G, q e^G serve the scores and the solve.
        k_f = k * (-G).exp()                                  # <= e^{span}, far from overflow
        kt = k_f.transpose(-1, -2)
        A, M = p_in @ kt, q_in @ kt                          # wy_chunks reads s < t, s <= t
        k_out = k_f * G_end.exp()                             # k e^{G_C - G}
    else:
        A, M = _decayed_scores((p, q), k, G, c)
        k_out = k * (G_end - G).exp()
    return wy_chunks(A, M, v, p_in, q_in, k_out, G_end.transpose(-1, -2).exp(), S, scale, T)
