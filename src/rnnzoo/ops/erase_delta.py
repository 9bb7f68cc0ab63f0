"""The delta rule with its erase key apart from its write key, and a decay per key channel.

Per head, with a write key k_t, an erase (read) key p_t, a value v_t and a log-decay g_t <= 0
(a scalar or one per key channel), the erase reads the state after the decay

    S_t = (I - k_t p_t^T) diag(exp g_t) S_{t-1} + k_t v_t^T,   o_t = scale S_t^T q_t

or, with before_decay=True (a scalar g only), before it: a scalar-plus-low-rank transition

    S_t = (exp(g_t) I - k_t p_t^T) S_{t-1} + k_t v_t^T

S: (K, V). The gates of a layer live in p and v:
- KDA (arXiv:2510.26692): p = beta k, v = beta v (ops.chunk.kda);
- GDN-2 (fla-core's Gated DeltaNet 2): p = b o k (an erase gate per key channel),
  v = w o v (a write gate per value channel), g per key channel;
- Comba (Hu et al. 2025, arXiv:2506.02475), before the decay: p = beta d k (the inner
  decay d), v = beta v, a scalar g per head (SPLR: alpha I - beta k p^T).

Chunkwise form: the UT transform of ops.chunk.kda with the erase key in place of beta k.
With G_t = sum_{s <= t} g_s inside a chunk entered with state S_0 and E_t the decay the
erase sees (E = G, or G_{t-1} = G_t - g_t before the decay), the update is
S_t = diag(e^{g_t}) S_{t-1} + k_t u_t^T with u_t = v_t - (diag(e^{E_t - G_{t-1}}) S_{t-1})^T p_t, so

    (I + A) U = V - (P o e^E) S_0,   A_ts = sum_c p_tc k_sc e^{E_tc - G_sc}   (s < t)
    O   = scale ((Q o e^G) S_0 + M U),  M_ts = sum_c q_tc k_sc e^{G_tc - G_sc}   (s <= t)
    S_C = diag(e^{G_C}) S_0 + (K o e^{G_C - G})^T U

A vector decay runs ops.chunk.kda's `vector_decay_chunks` (its scores through sub-chunk
boundaries); a scalar decay's are products times the (C, C) matrix of e^{E_t - G_s} (every exponent <= 0).
A non-finite k, v, g or p at step t makes the outputs from t on and the final state NaN, a
non-finite q its own output only (ops.finite), in both forms.
All tensors are (B, T, H, D); states accumulate in float32 (float64 for float64 input).
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import flop_count, sequence_parallel
from rnnzoo.ops.chunk._common import causal_decay, to_chunks, wy_chunks
from rnnzoo.ops.chunk.delta import CPU_CHUNK, _check, _initial
from rnnzoo.ops.chunk.kda import chunk_sizes, erase_form, vector_decay_chunks
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import vector_delta as native_vector

__all__ = ["erase_delta", "erase_delta_recurrent", "erase_delta_step"]


def erase_delta_step(q_t, k_t, v_t, g_t, p_t, S, scale, before_decay=False):
    """One step. q_t, k_t, p_t: (B, H, K); v_t: (B, H, V); g_t: (B, H) or (B, H, K);
    S: (B, H, K, V). Returns (o_t (B, H, V), S_t)."""
    decay = g_t.exp()[..., None, None] if g_t.dim() == 2 else g_t.exp()[..., None]
    if before_decay:
        u = v_t - torch.einsum("bhk,bhkv->bhv", p_t, S)
        S = S * decay
    else:
        S = S * decay
        u = v_t - torch.einsum("bhk,bhkv->bhv", p_t, S)
    S = S + k_t[..., :, None] * u[..., None, :]
    return scale * torch.einsum("bhk,bhkv->bhv", q_t, S), S


def _check_args(q, k, v, g, p, initial_state, before_decay):
    B, T, H, K = q.shape if isinstance(q, torch.Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    g_shape = (B, T, H) if isinstance(g, torch.Tensor) and g.dim() == 3 else (B, T, H, K)
    _check("erase_delta", q, dict(k=(k, (B, T, H, K)), v=(v, (B, T, H, V)), g=(g, g_shape),
                                  p=(p, (B, T, H, K))), initial_state, V)
    if before_decay and g.dim() != 3:
        raise ValueError(f"erase_delta: before_decay needs a scalar decay g of shape {(B, T, H)}, "
                         f"got {tuple(g.shape)}")


def erase_delta_recurrent(q, k, v, g, p, *, scale=None, initial_state=None, before_decay=False):
    """Reference loop of `erase_delta` (same arguments, returns)."""
    _check_args(q, k, v, g, p, initial_state, before_decay)
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, v.shape[-1], dt, q.device)
    out = []
    for q_t, k_t, v_t, g_t, p_t in zip(*(t.to(dt).unbind(1) for t in (q, k, v, g, p))):
        o_t, S = erase_delta_step(q_t, k_t, v_t, g_t, p_t, S, scale, before_decay)
        out.append(o_t)
    return torch.stack(out, 1).to(q.dtype), S


def erase_delta(q, k, v, g, p, *, scale=None, initial_state=None, before_decay=False,
                chunk_size=32, subchunk_size=8):
    """Chunkwise S_t = (I - k_t p_t^T) diag(exp g_t) S_{t-1} + k_t v_t^T (before_decay:
    S_t = (exp(g_t) I - k_t p_t^T) S_{t-1} + k_t v_t^T), o_t = scale S_t^T q_t.

    q, k, p: (B, T, H, K); v: (B, T, H, V); g: (B, T, H) or (B, T, H, K) log-decay (<= 0),
    (B, T, H) with before_decay; scale: default K^-0.5; initial_state: (B, H, K, V) or None
    (zeros). subchunk_size: the sub-chunks of a vector decay's scores. Returns o
    (B, T, H, V) in q's dtype and the final state (B, H, K, V) in float32 (float64 for
    float64 q). On a CPU, float32 or float64 in one dtype, the recurrence in C runs instead
    (`ops.native.vector_delta`, erase key p e^g, or p before the decay); otherwise chunks of
    at most ops.chunk.delta's `CPU_CHUNK` steps there.
    """
    _check_args(q, k, v, g, p, initial_state, before_decay)
    if sequence_parallel.active():  # this rank's time slice: LASP-2 (ops/sequence_parallel.py)
        return sequence_parallel.lasp2(erase_delta, q, k, v, g, p, scale=scale,
                                       initial_state=initial_state, before_decay=before_decay,
                                       chunk_size=chunk_size, subchunk_size=subchunk_size)
    positive_int("erase_delta: chunk_size", chunk_size)
    positive_int("erase_delta: subchunk_size", subchunk_size)
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, v.shape[-1], dt, q.device)
    out_dtype = q.dtype
    # flop_count.native: bench.layer_flops counts this path (vector_delta books its FLOPs)
    lib = native_vector.load() if flop_count.native(q, k, v, g, p, S) else None
    if q.device.type == "cpu":                          # ops.chunk.delta's measured CPU chunk
        chunk_size = min(chunk_size, CPU_CHUNK)
    if lib is not None:  # the recurrence in C (ops.native.vector_delta), b = -k
        (q,), (k, v, g, p), marks = clean_inputs((q,), (k, v, g, p))
        w = g[..., None] if g.dim() == 3 else g            # one log-decay a head, or a channel
        # the chunk form below, which the node's `twice` differentiates under create_graph
        plain = (functools.partial(_scalar_form, scale=scale, C=min(chunk_size, T),
                                   before_decay=before_decay) if g.dim() == 3
                 else erase_form(scale, chunk_size, subchunk_size))
        o, S = marked(*native_vector.vector_delta(
            lib, q, w, k, v, p, None, S, scale, after=not before_decay, plain=plain), marks)
        return o.to(out_dtype), S
    (q,), (k, v, g, p), marks = finite_inputs((q,), tuple(t.to(dt) for t in (k, v, g, p)))
    if g.dim() == 3:
        o, S = _scalar_chunks(q.to(dt), k, v, g, p, S, scale, min(chunk_size, T), before_decay)
    else:
        o, S = vector_decay_chunks(q.to(dt), k, v, g, p, S, scale,
                                   *chunk_sizes(q, chunk_size, subchunk_size))
    return poison(o, marks.outputs).to(out_dtype), poison(S, marks.state)


def _scalar_form(r, w, k, v, a, b, S0, *, scale, C, before_decay):
    """`_scalar_chunks` in ops.native.vector_delta's argument order (w = g[..., None], a the
    erase key p, b None): the form its node's `twice` differentiates."""
    return _scalar_chunks(r, k, v, w[..., 0], a, S0, scale, C, before_decay)


def _scalar_chunks(q, k, v, g, p, S, scale, C, before_decay):
    """A scalar decay (one a head): the scores are products masked by e^{E_t - G_s}."""
    T = q.shape[1]
    q, k, v, p = (to_chunks(t, C) for t in (q, k, v, p))      # (B, H, N, C, D)
    G = to_chunks(g, C).cumsum(-1)                            # (B, H, N, C)
    E = G - to_chunks(g, C) if before_decay else G
    dec_a, dec_m = causal_decay(G, E, -1), causal_decay(G)
    kt = k.transpose(-1, -2)
    return wy_chunks((p @ kt) * dec_a, (q @ kt) * dec_m, v, p * E.exp()[..., None],
                     q * G.exp()[..., None], k * (G[..., -1:] - G).exp()[..., None],
                     G[..., -1].exp()[..., None, None], S, scale, T)
