"""The delta rule and its generalisations, chunkwise-parallel, each next to its recurrence.

All tensors are (B, T, H, D) (batch, time, heads, head dim); the state S is (B, H, K, V)
and is read out as o_t = scale * S_t^T q_t.

delta rule (Schlag et al. 2021, arXiv:2102.11174; chunkwise form: Yang et al. 2024,
"Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
arXiv:2406.06484), with the scalar gate of Gated DeltaNet (Yang, Kautz & Hatamizadeh
2025, arXiv:2412.06464), alpha_t = exp(g_t):

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T

beta in (0, 2) gives the transition negative eigenvalues (Grazzi et al. 2025,
arXiv:2411.12537); nothing here restricts beta.

DeltaProduct (Siems et al. 2025, arXiv:2502.10297): n_h Householder steps per token,
the gate applied once per token, the output read after the last step.

RWKV-7's generalised delta rule (Peng et al. 2025, "RWKV-7 Goose", arXiv:2503.14456),
a diagonal plus rank-one transition with log-decay w per key channel:

    S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T     (RWKV-7: a = -kappa, b = kappa * a)

Chunkwise form. Split time into chunks of C steps and let S_0 be the state entering a
chunk. With a scalar gate, G_t = sum_{s <= t} g_s inside the chunk, the update is
S_t = alpha_t S_{t-1} + k_t u_t^T with the "pseudo-value" u_t = beta_t (v_t - alpha_t
S_{t-1}^T k_t). Unrolling S_{t-1} inside the chunk gives a unit lower-triangular system
for all u of the chunk at once (the UT transform):

    (I + A) U = diag(beta) V - diag(beta e^G) K S_0,   A_ts = beta_t e^{G_t - G_s} k_t.k_s (s < t)

so U = U0 - W S_0 with [U0, W] = (I + A)^{-1} [diag(beta) V, diag(beta e^G) K] (one
triangular solve; W = T K and U0 = T V in the WY/UT notation). Then

    O   = scale * (diag(e^G) Q S_0 + (Q K^T o D) U),   D_ts = e^{G_t - G_s} (s <= t)
    S_C = e^{G_C} S_0 + (diag(e^{G_C - G}) K)^T U

Every exponent above is a difference G_t - G_s with s <= t, so no factor exceeds 1:
gates are handled in log space. The chunk-local parts (A, the solve, Q K^T o D) are
batched over all chunks; only S_0 -> S_C runs as a loop over the T / C chunks.

For RWKV-7 the decay is a vector, and the rank-one part plays the role of the delta
correction: z_t = S_{t-1}^T a_t solves (I - A_ab) Z = diag-decayed(a) S_0 + A_ak V with
A_xy[t, s] = sum_c x_t[c] y_s[c] exp(Wc_{t-1,c} - Wc_{s,c}) (s < t). The per-channel
decay between t and s is factored through the chunk's middle step m,
exp(Wc_t - Wc_m) * exp(Wc_m - Wc_s), so that A is a matrix product; the chunk is halved
until |Wc| over half a chunk stays below `_MAX_LOG_FACTOR`, so neither factor can
overflow (RWKV-7's own w > -exp(-0.5) keeps chunks of 64 intact).

States accumulate in float32 (float64 for float64 inputs); outputs come back in q's dtype.
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import backend, flop_count, sequence_parallel
from rnnzoo.ops.chunk._common import causal_decay as _causal_decay
from rnnzoo.ops.chunk._common import check_delta as _check
from rnnzoo.ops.chunk._common import check_rwkv7 as _check_rwkv7
from rnnzoo.ops.chunk._common import chunk_scan as _chunk_scan
from rnnzoo.ops.chunk._common import from_chunks as _from_chunks
from rnnzoo.ops.chunk._common import to_chunks as _to_chunks
from rnnzoo.ops.chunk._common import unit_lower_inverse as _unit_lower_inverse
from rnnzoo.ops.chunk._common import wy_chunks as _wy_chunks
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import delta_scan as native_delta
from rnnzoo.ops.native import vector_delta as native_vector

__all__ = ["delta_rule", "delta_rule_recurrent", "delta_rule_step",
           "delta_product", "delta_product_recurrent",
           "rwkv7", "rwkv7_recurrent", "rwkv7_step"]

_MAX_LOG_FACTOR = 30.0  # |log| of a factored decay; e^30 ~ 1e13, far from float32's range
# On a CPU the torch paths (delta_rule, rwkv7, ops.chunk.kda, ops.erase_delta) run chunks of
# at most this many steps: their (C, C) matrices cost memory passes, per step proportional to
# C, and the state pass costs ~K V / C per step; measured (B=16, T=2048, fwd+bwd, 1 thread)
# 16 beat 8, 32 and 64 at head dims 16 and 32 (chunk 64 ran 2-4x slower than 16), and again
# after chunk_scan (B=16: delta 297 / 393 / 492 ms at 16 / 32 / 64, kda 404 / 483 /
# 650; rwkv7's op 246 / 263 / 287 / 413 ms at 8 / 16 / 32 / 64, B=4). The result is the same
# for any chunk size.
CPU_CHUNK = 16
# The scalar-gate delta rule with a large state (K V >= 2048, Gated DeltaNet's K = 32,
# V = 64) runs CPU_WIDE_CHUNK: its state pass then outweighs the (C, C) passes (B=16,
# T=512, fwd+bwd of the layer, 1 thread: 481 / 416 ms at 16 / 32; K = V = 32: 270 / 265;
# K = 16, V = 32: 145 / 159). DeltaProduct's chunk counts flat (Householder) steps, n_h a
# token: 32 (V = 64, n_h = 2: 855 / 828 / 926 ms at 16 / 32 / 64).
CPU_WIDE_CHUNK = 32
CPU_PRODUCT_CHUNK = 32


def _cpu_chunk(K, V):
    """delta_rule's chunk bound on a CPU for head dims K, V."""
    return CPU_WIDE_CHUNK if K * V >= 2048 else CPU_CHUNK


# -- the initial state (the argument checks live in _common, shared with the kernels) ----------
def _initial(initial_state, B, H, K, V, dtype, device):
    if initial_state is None:
        return torch.zeros(B, H, K, V, dtype=dtype, device=device)
    return initial_state.to(dtype)


# -- delta rule (gated, any beta) ------------------------------------------------------------------
def delta_rule_step(q_t, k_t, v_t, beta_t, g_t, S, scale):
    """One step. q_t, k_t: (B, H, K); v_t: (B, H, V); beta_t, g_t: (B, H) or g_t None;
    S: (B, H, K, V). Returns (o_t (B, H, V), S_t)."""
    if g_t is not None:
        S = S * g_t.exp()[..., None, None]
    S = _householder_update(k_t, v_t, beta_t, S)
    return scale * torch.einsum("bhk,bhkv->bhv", q_t, S), S


def _householder_update(k_t, v_t, beta_t, S):
    """S + beta k (v - S^T k)^T = (I - beta k k^T) S + beta k v^T."""
    u = beta_t[..., None] * (v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))
    return S + k_t[..., :, None] * u[..., None, :]


def delta_rule_recurrent(q, k, v, beta, g=None, *, scale=None, initial_state=None):
    """Reference loop of `delta_rule` (same arguments, returns)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check("delta_rule", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)), beta=(beta, (B, T, H)),
                                 g=(g, (B, T, H))), initial_state, V)
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    gs = g.to(dt).unbind(1) if g is not None else [None] * T
    out = []
    for q_t, k_t, v_t, b_t, g_t in zip(q.to(dt).unbind(1), k.to(dt).unbind(1), v.to(dt).unbind(1),
                                       beta.to(dt).unbind(1), gs):
        o_t, S = delta_rule_step(q_t, k_t, v_t, b_t, g_t, S, scale)
        out.append(o_t)
    return torch.stack(out, 1).to(q.dtype), S


def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, chunk_size=64):
    """Chunkwise delta rule S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T.

    q, k: (B, T, H, K); v: (B, T, H, V); beta: (B, T, H) (any real; (0, 2) for negative
    eigenvalues); g: (B, T, H) log-gate (<= 0), None for plain DeltaNet; scale: default K^-0.5;
    initial_state: (B, H, K, V) or None (zeros). Returns o (B, T, H, V) in q's dtype and the
    final state (B, H, K, V) in float32 (float64 for float64 q). On CUDA (when triton
    imports; `ops.backend`) the Triton kernel `ops.triton.chunk_delta` runs instead, for
    every dtype but float64; on a CPU, float32 or float64 in one dtype, the recurrence in C
    (`ops.native.delta_scan`; fwd+bwd 1.5-2.1x faster than the chunks at B=16 T=512 and
    B=4 T=2048, K = 32..128), else chunks of at most `_cpu_chunk(K, V)` steps. A
    non-finite input at step t makes outputs from t on NaN, never earlier ones (ops.finite).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check("delta_rule", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)), beta=(beta, (B, T, H)),
                                 g=(g, (B, T, H))), initial_state, V)
    positive_int("delta_rule: chunk_size", chunk_size)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 (ops/sequence_parallel.py)
        return sequence_parallel.lasp2(delta_rule, q, k, v, beta, g, scale=scale,
                                       initial_state=initial_state, chunk_size=chunk_size)
    if q.dtype != torch.float64 and backend.use_triton(q, k, v, beta, g, initial_state):
        from rnnzoo.ops.triton import chunk_delta
        return chunk_delta.delta_rule(q, k, v, beta, g, scale=scale,
                                      initial_state=initial_state, chunk_size=chunk_size,
                                      plain=delta_rule_recurrent)  # its create_graph form
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    if q.device.type == "cpu":
        chunk_size = min(chunk_size, _cpu_chunk(K, V))
    # flop_count.native: bench.layer_flops counts this path (delta_scan books its FLOPs)
    lib = native_delta.load() if flop_count.native(q, k, v, beta, g, S) else None
    if lib is not None:  # the recurrence in C: 1.5-2.1x the chunks, K = 32..128 (docstring)
        (q,), (k, v, beta, g), marks = clean_inputs((q,), (k, v, beta, g))
        o, S = marked(*native_delta.delta(
            lib, q, k, v, beta, torch.zeros_like(beta) if g is None else g, S, scale, 1,
            functools.partial(_delta_chunks, scale=scale, C=chunk_size)), marks)
        return o.to(q.dtype), S
    (qf,), (k, v, beta, g), marks = finite_inputs((q,), (k, v, beta, g))
    o, S = _delta_chunks(qf.to(dt), k.to(dt), v.to(dt), beta.to(dt),
                         None if g is None else g.to(dt), S, scale, chunk_size)
    return poison(o, marks.outputs).to(q.dtype), poison(S, marks.state)


def _delta_chunks(q, k, v, beta, g, S, scale, C, n=1):
    """The chunkwise solver on compute-dtype tensors (see the module docstring).

    n > 1 (DeltaProduct): k, v, beta, g run over n steps per output and q holds only the
    output steps, (B, T / n, H, K), read after every n-th step; C is a multiple of n. The
    readout (Q K^T o D and Q S_0) then has C / n rows a chunk, not C with zero queries.
    Zero padding at the end is exact: k = v = beta = g = 0 leaves the state unchanged.
    """
    T = k.shape[1]
    C = min(C, T)
    k, v = (_to_chunks(t, C) for t in (k, v))             # (B, H, N, C, D)
    q = _to_chunks(q, C // n)                             # (B, H, N, C / n, K)
    beta = _to_chunks(beta, C)                            # (B, H, N, C)
    rows = slice(n - 1, None, n)                          # the flat steps that are read
    # The (B, H, N, C, C) matrices cost memory passes, not flops: each is made in as few
    # elementwise passes as the gate allows (wy_chunks masks A to s < t and P to s <= t).
    kb = beta[..., None] * k
    A = kb @ k.transpose(-1, -2)                          # beta_t k_t.k_s: (B, H, N, C, C)
    P = q @ k.transpose(-1, -2)                           # (B, H, N, C / n, C)
    if g is None:
        eG = eGlast = eGtail = None
    else:
        G = _to_chunks(g, C).cumsum(-1)                   # (B, H, N, C)
        decay = _causal_decay(G)                          # e^{G_t - G_s}, s <= t
        eG, eGlast, eGtail = G.exp(), G[..., -1].exp(), (G[..., -1:] - G).exp()
        A, P = A * decay, P * decay[..., rows, :]         # e^{G_t - G_s} on s <= t
    Qg = q if eG is None else q * eG[..., rows, None]     # P = Q K^T o D, causal incl. diagonal
    Kd = k if eG is None else k * eGtail[..., None]
    return _wy_chunks(A, P, beta[..., None] * v, kb if eG is None else kb * eG[..., None], Qg, Kd,
                      None if eGlast is None else eGlast[..., None, None], S, scale, T // n)


# -- DeltaProduct -------------------------------------------------------------------------------
def _product_as_delta(q, k, v, beta, g):
    """Flatten n_h Householder steps per token into a delta rule over T * n_h steps: the
    gate acts at each token's first step, the query at its last."""
    B, T, n_h, H, K = k.shape
    V = v.shape[-1]
    qf = torch.cat([q.new_zeros(B, T, n_h - 1, H, K), q[:, :, None]], 2).reshape(B, T * n_h, H, K)
    gf = None
    if g is not None:
        gf = torch.cat([g[:, :, None], g.new_zeros(B, T, n_h - 1, H)], 2).reshape(B, T * n_h, H)
    return (qf, k.reshape(B, T * n_h, H, K), v.reshape(B, T * n_h, H, V),
            beta.reshape(B, T * n_h, H), gf)


def _check_product(q, k, v, beta, g, initial_state):
    if not isinstance(k, torch.Tensor) or k.dim() != 5:
        raise ValueError(f"delta_product: k must be (B, T, n_h, H, K), got "
                         f"{tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__}")
    B, T, n_h, H, K = k.shape
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    _check("delta_product", q, dict(q=(q, (B, T, H, K)), v=(v, (B, T, n_h, H, V)),
                                    beta=(beta, (B, T, n_h, H)), g=(g, (B, T, H))),
           initial_state, V)


def delta_product_recurrent(q, k, v, beta, g=None, *, scale=None, initial_state=None):
    """Reference loop of `delta_product`: per token, the gate, then n_h delta-rule steps."""
    _check_product(q, k, v, beta, g, initial_state)
    B, T, n_h, H, K = k.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    gs = g.to(dt).unbind(1) if g is not None else [None] * T
    out = []
    for q_t, k_t, v_t, b_t, g_t in zip(q.to(dt).unbind(1), k.to(dt).unbind(1), v.to(dt).unbind(1),
                                       beta.to(dt).unbind(1), gs):
        if g_t is not None:
            S = S * g_t.exp()[..., None, None]
        for k_tj, v_tj, b_tj in zip(k_t.unbind(1), v_t.unbind(1), b_t.unbind(1)):
            S = _householder_update(k_tj, v_tj, b_tj, S)
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(out, 1).to(q.dtype), S


def delta_product(q, k, v, beta, g=None, *, scale=None, initial_state=None, chunk_size=64):
    """Chunkwise DeltaProduct: per token t, S <- exp(g_t) S, then for j = 1..n_h
    S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T; o_t = scale * S^T q_t.

    q: (B, T, H, K); k: (B, T, n_h, H, K); v: (B, T, n_h, H, V); beta: (B, T, n_h, H);
    g: (B, T, H) or None. chunk_size counts tokens. Returns (o (B, T, H, V), state).
    The n_h T steps run as one delta rule (the gate at each token's first step). On a CPU
    (float32/64) the C recurrence runs them with one query and gate a token
    (`ops.native.delta_scan`, n = n_h); the Triton and sequence-parallel paths take
    `delta_rule` over the flat steps with zero queries; the chunks (float64 under force("torch"), bfloat16, ...) read out
    one row a token, and a CPU chunk is at most CPU_PRODUCT_CHUNK flat steps.
    """
    _check_product(q, k, v, beta, g, initial_state)
    B, T, n_h, H, K = k.shape
    V = v.shape[-1]
    positive_int("delta_product: chunk_size", chunk_size)
    lib = None if sequence_parallel.active() or not flop_count.native(
        q, k, v, beta, g, initial_state) else native_delta.load()
    if lib is not None:  # the C recurrence over the flat steps, one query and gate a token
        dt = compute_dtype(q)
        S = _initial(initial_state, B, H, K, V, dt, q.device)
        (qf,), (k, v, beta, g), marks = clean_inputs((q,), (k, v, beta, g))
        scale = K ** -0.5 if scale is None else scale
        o, S = marked(*native_delta.delta(lib, qf, k.reshape(B, T * n_h, H, K),
                                          v.reshape(B, T * n_h, H, V), beta.reshape(B, T * n_h, H),
                                          beta.new_zeros(B, T, H) if g is None else g, S,
                                          scale, n_h, product_plain(scale, chunk_size)), marks)
        return o.to(q.dtype), S
    if sequence_parallel.active() or (
            q.dtype != torch.float64 and backend.use_triton(q, k, v, beta, g, initial_state)):
        # delta_rule's paths over the flat steps
        qf, kf, vf, bf, gf = _product_as_delta(q, k, v, beta, g)
        o, S = delta_rule(qf, kf, vf, bf, gf, scale=K ** -0.5 if scale is None else scale,
                          initial_state=initial_state, chunk_size=chunk_size * n_h)
        return o.reshape(B, T, n_h, H, -1)[:, :, -1], S
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, dt, q.device)
    (qf,), (k, v, beta, g), marks = finite_inputs((q,), (k, v, beta, g))
    o, S = _product_chunks(qf.to(dt), k.reshape(B, T * n_h, H, K).to(dt),
                           v.reshape(B, T * n_h, H, V).to(dt), beta.reshape(B, T * n_h, H).to(dt),
                           None if g is None else g.to(dt), S, scale, chunk_size)
    return poison(o, marks.outputs).to(q.dtype), poison(S, marks.state)


def _product_chunks(q, k, v, beta, g, S, scale, C):
    """delta_product's chunk form over the flat steps, as the C recurrence takes them: q
    (B, T, H, K) and g (B, T, H) or None a token, k, v, beta (B, T n, H, ...) n a token; C
    tokens a chunk (on a CPU at most CPU_PRODUCT_CHUNK flat steps). Compute-dtype tensors;
    returns (o (B, T, H, V), S_T)."""
    B, T, H = q.shape[:3]
    n = k.shape[1] // T
    if q.device.type == "cpu":
        C = min(C, max(1, CPU_PRODUCT_CHUNK // n))
    if g is not None:   # the gate at each token's first step
        g = torch.cat([g[:, :, None], g.new_zeros(B, T, n - 1, H)], 2).reshape(B, T * n, H)
    return _delta_chunks(q, k, v, beta, g, S, scale, min(C, T) * n, n)


def product_plain(scale, chunk_size):
    """The plain form ops.native.delta_scan's node differentiates under create_graph for
    DeltaProduct (n steps a token): plain(q, k, v, beta, g, S0) -> (o, S_T), the chunk form
    over the flat steps (`_product_chunks`)."""
    return functools.partial(_product_chunks, scale=scale, C=chunk_size)


# -- RWKV-7 -------------------------------------------------------------------------------------
def rwkv7_step(r_t, w_t, k_t, v_t, a_t, b_t, S, scale):
    """One step of S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T, o_t = scale S_t^T r_t.
    r_t, w_t, k_t, a_t, b_t: (B, H, K); v_t: (B, H, V); S: (B, H, K, V)."""
    z = torch.einsum("bhk,bhkv->bhv", a_t, S)
    S = S * w_t.exp()[..., None] + b_t[..., None] * z[..., None, :] + k_t[..., None] * v_t[..., None, :]
    return scale * torch.einsum("bhk,bhkv->bhv", r_t, S), S


def rwkv7_recurrent(r, w, k, v, a, b, *, scale=1.0, initial_state=None):
    """Reference loop of `rwkv7` (same arguments, returns)."""
    _check_rwkv7(r, w, k, v, a, b, initial_state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = compute_dtype(r)
    S = _initial(initial_state, B, H, K, V, dt, r.device)
    out = []
    for args in zip(*(t.to(dt).unbind(1) for t in (r, w, k, v, a, b))):
        o_t, S = rwkv7_step(*args, S, scale)
        out.append(o_t)
    return torch.stack(out, 1).to(r.dtype), S


def rwkv7(r, w, k, v, a, b, *, scale=1.0, initial_state=None, chunk_size=64, w_min=None):
    """Chunkwise RWKV-7 generalised delta rule S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,
    o_t = scale * S_t^T r_t.

    r, w, k, a, b: (B, T, H, K), w the log-decay (<= 0) per key channel; v: (B, T, H, V);
    initial_state: (B, H, K, V) or None. Returns (o (B, T, H, V) in r's dtype, final state).
    The chunk is halved while half a chunk's cumulative decay could overflow its factors:
    w_min, a float with w >= w_min everywhere (RWKV-7's layer: -exp(-0.5)), gives the
    steepest decay without reading w; None reads min(w) (a host read: a sync on an
    accelerator). On CUDA (when triton imports; `ops.backend`) the Triton kernel
    `ops.triton.chunk_rwkv7` runs instead (any decay, no read), for every dtype but float64;
    on a CPU, float32 or float64 in one dtype, the recurrence in C (`ops.native.vector_delta`).
    A non-finite input at step t makes outputs from t on NaN, never earlier ones (ops.finite).
    """
    _check_rwkv7(r, w, k, v, a, b, initial_state)
    positive_int("rwkv7: chunk_size", chunk_size)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 (ops/sequence_parallel.py)
        return sequence_parallel.lasp2(_rwkv7_qkv, r, k, v, w, a, b, scale=scale,
                                       initial_state=initial_state, chunk_size=chunk_size,
                                       w_min=w_min)
    if r.dtype != torch.float64 and backend.use_triton(r, w, k, v, a, b, initial_state):
        from rnnzoo.ops.triton import chunk_rwkv7
        return chunk_rwkv7.rwkv7(r, w, k, v, a, b, scale=scale, initial_state=initial_state,
                                 chunk_size=chunk_size, plain=rwkv7_recurrent)
    B, T, H, K = r.shape
    V = v.shape[-1]
    dt = compute_dtype(r)
    S = _initial(initial_state, B, H, K, V, dt, r.device)
    out_dtype = r.dtype
    # flop_count.native: bench.layer_flops counts this path (vector_delta books its FLOPs)
    lib = native_vector.load() if flop_count.native(r, w, k, v, a, b, S) else None
    if lib is not None:  # the recurrence in C (ops.native.vector_delta)
        (r,), (w, k, v, a, b), marks = clean_inputs((r,), (w, k, v, a, b))
        plain = functools.partial(_rwkv7_form, scale=scale, chunk_size=chunk_size, w_min=w_min)
        o, S = marked(*native_vector.vector_delta(lib, r, w, k, v, a, b, S, scale, plain=plain),
                      marks)
        return o.to(out_dtype), S
    (r,), (w, k, v, a, b), marks = finite_inputs((r,), (w, k, v, a, b))
    o, S = _rwkv7_form(*(t.to(dt) for t in (r, w, k, v, a, b)), S, scale=scale,
                       chunk_size=chunk_size, w_min=w_min)
    return poison(o, marks.outputs).to(out_dtype), poison(S, marks.state)


def _rwkv7_form(r, w, k, v, a, b, S, *, scale, chunk_size, w_min):
    """rwkv7's chunk form on clean compute-dtype tensors, the chunk halved as its docstring
    says: its PyTorch path, and the form ops.native.vector_delta's `twice` differentiates."""
    T = r.shape[1]
    C = min(chunk_size, T, CPU_CHUNK) if r.device.type == "cpu" else min(chunk_size, T)
    steepest = max(0.0, -float(w_min)) if w_min is not None else \
        float(-w.detach().min().clamp(max=0))
    while C > 1 and steepest * (C + 1) / 2 > _MAX_LOG_FACTOR:
        C //= 2
    return _rwkv7_chunks(r, w, k, v, a, b, S, scale, C)


def _rwkv7_qkv(r, k, v, w, a, b, **options):
    """`rwkv7` with lasp2's argument order (q, k, v, *gates)."""
    return rwkv7(r, w, k, v, a, b, **options)


def _rwkv7_chunks(r, w, k, v, a, b, S, scale, C):
    """See the module docstring: Z = (I - A_ab)^{-1} (a~ S_0 + A_ak V) per chunk, then
    O = r~ S_0 + B_rb Z + B_rk V, S_C = e^{Wc_C} S_0 + b^T Z + k^T V (decayed to the chunk end)."""
    T = r.shape[1]
    r, w, k, v, a, b = (_to_chunks(t, C) for t in (r, w, k, v, a, b))  # (B, H, N, C, D)
    Wc = w.cumsum(-2)                                     # inclusive: Wc_t
    Wprev = Wc - w                                        # exclusive: Wc_{t-1}
    mid = Wc[..., C // 2: C // 2 + 1, :]                  # reference step of the factorisation
    # Exponents of the pairs that are kept (s < t, or s <= t) stay below 1.5 * _MAX_LOG_FACTOR;
    # the clamp only touches factors of masked pairs (a single-step chunk with a steep decay),
    # so that no factor is inf and no gradient meets inf * 0.
    factor = lambda x: x.clamp(max=2 * _MAX_LOG_FACTOR).exp()  # noqa: E731
    into = factor(mid - Wc)
    b_in, k_in = b * into, k * into                       # e^{Wc_m - Wc_s} y_s
    a_out, r_out = a * factor(Wprev - mid), r * factor(Wc - mid)  # e^{Wc_t - Wc_m} x_t
    bk_in = torch.cat([b_in, k_in], -2).transpose(-1, -2)  # (..., K, 2C): both blocks at once
    col, row = torch.arange(2 * C, device=r.device) % C, torch.arange(C, device=r.device)[:, None]
    A_ab, A_ak = (a_out @ bk_in).masked_fill_(col >= row, 0).split(C, -1)  # s < t
    B_rbk = (r_out @ bk_in).masked_fill_(col > row, 0)  # [B_rb, B_rk], s <= t
    Tinv = _unit_lower_inverse(-A_ab)                     # (I - A_ab)^{-1}
    Uz = Tinv @ (A_ak @ v)                                # Z = Uz + Wz S_0
    Wz = Tinv @ (a * Wprev.exp())
    tail = (Wc[..., -1:, :] - Wc).exp()                   # decay from step s to the chunk end
    # The state pass with the rank-one part and the values stacked, [Z; V] = [Uz; V] - [-Wz; 0] S_0
    # (chunk_scan's W of C rows: the values read no state):
    # S_C = e^{Wc_C} S_0 + [b; k]_tail^T [Z; V],  O = scale (r~ S_0 + [B_rb, B_rk] [Z; V]).
    o, S = _chunk_scan(S, torch.cat([Uz, v], -2), -Wz,
                       (torch.stack([b, k], -3) * tail[..., None, :, :]).flatten(-3, -2),
                       Wc[..., -1, :, None].exp(), r * Wc.exp(), B_rbk, scale)
    return _from_chunks(o, T), S
