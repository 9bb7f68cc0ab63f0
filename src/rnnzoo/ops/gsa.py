"""Gated slot attention (Zhang et al. 2024, "Gated Slot Attention for Efficient Linear-Time
Sequence Modeling", arXiv:2409.07146): a bounded memory of M slots written by a forget gate
alpha_t in (0, 1)^M and read by a softmax over the slots, i.e. two passes of gated linear
attention.

    K~_t = diag(alpha_t) K~_{t-1} + (1 - alpha_t) k_t^T        K~: (M, K)
    V~_t = diag(alpha_t) V~_{t-1} + (1 - alpha_t) v_t^T        V~: (M, V)
    o_t  = V~_t^T softmax(K~_t (scale q_t))

With s_t = 1 - alpha_t, the first pass (the slot scores) keeps hk = K~^T (K, M) with the
decay on its slot (value) axis: each slot m is a scalar-decay linear attention of value
width 1, so it runs as ops.chunk.linear with M times the heads. The second pass is a plain
vector-decay GLA with key s_t, decay alpha_t over the slots and query softmax(scores).

The chunk form of the first pass does not split the heads: with LA_t = sum_{s <= t} log
alpha_s inside a chunk entered with hk_0, all slots share the (C, C) products q_t . k_s,

    scores = e^{LA} o ((Q K^T o causal) (S o e^{-LA}) + Q hk_0) scale,
    hk_C   = hk_0 o e^{LA_C} + K^T (S o e^{LA_C - LA}),

a factorisation through the chunk start. The second pass shares its factors: with
P_t = softmax(scores_t) o e^{LA_t} and X = S o e^{-LA},

    o    = ((P X^T) o causal) V + P hv_0,      hv_C = e^{LA_C} o hv_0 + (S o e^{LA_C - LA})^T V,

so both passes run in one function on the same chunked tensors. On the CPU in float32/float64
(`ops.backend.use_native`) both passes and the softmax between them run instead as one C
recurrence (ops.native.gla_scan.gsa_passes: hk^T and hv side by side as (M, K + V) slot rows
that share the decay). Otherwise the chunked function runs on the CPU, where
the decay a chunk accumulates is read without a device sync, while that span stays below
ops.chunk.linear's factorising limit (far from overflow); otherwise (and off the CPU) the
two passes are ops.chunk.linear's, the first with a head a slot, which cut chunks into
sub-chunks as needed.

States: hk (B, H, K, M) and hv = V~ (B, H, M, V), fla's layout; their size does not depend
on the sequence length.
"""

from __future__ import annotations

import torch

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk._common import from_chunks, to_chunks
from rnnzoo.ops.chunk.linear import (
    _factorise_limit,
    gated_linear_attention,
    gated_linear_attention_recurrent,
)
from rnnzoo.ops.finite import finite_inputs, poison
from rnnzoo.ops.native import gla_scan as native_gla

__all__ = ["gated_slot_attention"]


def gated_slot_attention(q, k, v, s, log_alpha, *, scale=None, initial_state=None,
                         mode: str = "chunk", chunk_size: int = 64):
    """q, k: (B, T, H, K); v: (B, T, H, V); s = 1 - alpha and log_alpha: (B, T, H, M);
    initial_state: (hk (B, H, K, M), hv (B, H, M, V)) or None. mode: "sequential" (the
    recurrent loops) or "chunk". -> (o (B, T, H, V) in q's dtype, (hk, hv))."""
    choice("mode", mode, ("sequential", "chunk"))
    positive_int("chunk_size", chunk_size)
    B, T, H, K = q.shape
    M = s.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if mode == "sequential":
        run, extra = gated_linear_attention_recurrent, {}
    else:
        run, extra = gated_linear_attention, {"chunk_size": chunk_size}
    hk0, hv0 = (None, None) if initial_state is None else initial_state
    # pass 1: slot m is a head of key width K, value width 1, scalar decay alpha_m. Under
    # sequence parallelism both passes take gated_linear_attention's exchange (LASP-2): the
    # first pass's scores are exact before the softmax, so the second pass's inputs are too
    fused = mode == "chunk" and not sequence_parallel.active()
    both = _native_passes(q, k, v, s, log_alpha, scale, hk0, hv0) if fused else None
    if both is None and fused:
        both = _two_passes(q, k, v, s, log_alpha, scale, hk0, hv0, chunk_size)
    if both is not None:
        return both
    def per_slot(t):
        return t[:, :, :, None].expand(B, T, H, M, K).reshape(B, T, H * M, K)

    S1 = None if hk0 is None else hk0.transpose(-1, -2).reshape(B, H * M, K, 1)
    scores, S1 = run(per_slot(q), per_slot(k), s.reshape(B, T, H * M, 1),
                     log_alpha.reshape(B, T, H * M), scale=scale, initial_state=S1, **extra)
    hk = S1.view(B, H, M, K).transpose(-1, -2)
    # pass 2: read the value slots through the softmax over slots
    o, hv = run(scores.view(B, T, H, M).softmax(-1), s, v, log_alpha, scale=1.0,
                initial_state=hv0, **extra)
    return o, (hk, hv)


def _loops(q, k, v, s, log_alpha, hk0, hv0, scale):
    """gsa_passes' arguments to the recurrent loops (mode "sequential"): the plain form the C
    node's `twice` differentiates. -> (o, hk, hv)."""
    o, (hk, hv) = gated_slot_attention(q, k, v, s, log_alpha, scale=scale,
                                       initial_state=(hk0, hv0), mode="sequential")
    return o, hk, hv


def _native_passes(q, k, v, s, log_alpha, scale, hk0, hv0):
    """Both passes and the softmax over slots as one C recurrence each way
    (ops.native.gla_scan.gsa_passes) on the CPU in float32/float64 (`backend.use_native`);
    or None where the kernels do not run. -> (o (B, T, H, V), (hk, hv))."""
    lib = native_gla.load() if backend.use_native(q, k, v, s, log_alpha) else None
    if lib is None:
        return None
    B, T, H, K = q.shape
    M, V = s.shape[-1], v.shape[-1]
    dt = out_dtype = q.dtype
    hk0 = torch.zeros(B, H, K, M, dtype=dt, device=q.device) if hk0 is None else hk0.to(dt)
    hv0 = torch.zeros(B, H, M, V, dtype=dt, device=q.device) if hv0 is None else hv0.to(dt)
    # recurrences: a non-finite step never reaches an earlier output, so no finite_inputs marks
    o, hk, hv = native_gla.gsa_passes(lib, q, k, v, s, log_alpha, hk0, hv0, scale, _loops)
    return o.to(out_dtype), (hk, hv)


def _two_passes(q, k, v, s, log_alpha, scale, hk0, hv0, C):
    """Both passes chunkwise on the CPU (the module docstring), sharing the slot factors
    X = s o e^{-LA} and Y = s o e^{LA_C - LA} and the query factor e^{LA}; or None where a
    chunk's decay span is not known to be small. -> (o (B, T, H, V), (hk, hv))."""
    if not backend.host_readable(q):
        return None
    B, T, H, K = q.shape
    M, V = s.shape[-1], v.shape[-1]
    dt = compute_dtype(q)
    out_dtype = q.dtype
    C = min(C, T)
    # the marks of each pass as the two loops make them: hk reads q, k, s, alpha; hv only
    # s, alpha, v (a bad score reaches the outputs, never hv)
    (q,), (k,), m_qk = finite_inputs((q,), (k.to(dt),))
    _, (s, log_alpha), m_s = finite_inputs((), (s.to(dt), log_alpha.to(dt)))
    _, (v,), m_v = finite_inputs((), (v.to(dt),))
    LA = to_chunks(log_alpha, C).cumsum(-2)                          # (B, H, N, C, M)
    if -LA[..., -1, :].min().item() >= _factorise_limit(dt):
        return None
    qc, kc, sc, vc = (to_chunks(t, C) for t in (q.to(dt) * scale, k, s, v))
    E, L_end = LA.exp(), LA[..., -1:, :]
    X = sc * (-LA).exp()                                             # s_s e^{-LA_s}
    Y = X * L_end.exp()                                              # s_s e^{LA_C - LA_s}
    decay = L_end.exp()                                              # (B, H, N, 1, M)
    # pass 1: scores_t = e^{LA_t} o (sum_{s<=t} (q_t . k_s) X_s + q_t hk_0)
    intra = (qc @ kc.transpose(-1, -2)).tril_() @ X                  # in place: one pass
    hk = torch.zeros(B, H, K, M, dtype=dt, device=q.device) if hk0 is None else hk0.to(dt)
    starts = []
    for dec_n, upd_n in zip(decay.unbind(2), (kc.transpose(-1, -2) @ Y).unbind(2)):
        starts.append(hk)
        hk = hk * dec_n + upd_n
    PE = (E * (intra + qc @ torch.stack(starts, 2))).softmax(-1) * E   # softmax over slots
    # pass 2: o_t = sum_{s<=t} (P_t e^{LA_t} . X_s) v_s + P_t e^{LA_t} hv_0
    hv = torch.zeros(B, H, M, V, dtype=dt, device=q.device) if hv0 is None else hv0.to(dt)
    starts = []
    for dec_n, upd_n in zip(decay.transpose(-1, -2).unbind(2),
                            (Y.transpose(-1, -2) @ vc).unbind(2)):
        starts.append(hv)
        hv = hv * dec_n + upd_n
    o = (PE @ X.transpose(-1, -2)).tril_() @ vc + PE @ torch.stack(starts, 2)
    o = poison(from_chunks(o, T), m_qk.outputs | m_s.outputs | m_v.outputs).to(out_dtype)
    return o, (poison(hk, m_qk.state | m_s.state), poison(hv, m_s.state | m_v.state))
