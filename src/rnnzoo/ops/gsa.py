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

a factorisation through the chunk start. It runs on the CPU, where the decay a chunk
accumulates is read without a device sync, while that span stays below ops.chunk.linear's
factorising limit (far from overflow); otherwise (and off the CPU) the first pass is
ops.chunk.linear with a head a slot, which cuts chunks into sub-chunks as needed.

States: hk (B, H, K, M) and hv = V~ (B, H, M, V), fla's layout; their size does not depend
on the sequence length.
"""

from __future__ import annotations

import torch

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import sequence_parallel
from rnnzoo.ops.chunk._common import from_chunks, to_chunks
from rnnzoo.ops.chunk.linear import (
    _factorise_limit,
    gated_linear_attention,
    gated_linear_attention_recurrent,
)
from rnnzoo.ops.finite import finite_inputs, poison

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
    first = _slot_scores(q, k, s, log_alpha, scale, hk0, chunk_size) if fused else None
    if first is not None:
        scores, hk = first
    else:
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


def _slot_scores(q, k, s, log_alpha, scale, hk0, C):
    """The first pass chunkwise with the slots as one value axis (the module docstring), or
    None where a chunk's decay span is not known to be small. -> (scores (B, T, H, M), hk)."""
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    B, T, H, K = q.shape
    M = s.shape[-1]
    dt = compute_dtype(q)
    out_dtype = q.dtype
    (q,), (k, s, log_alpha), marks = finite_inputs((q,), tuple(t.to(dt) for t in (k, s, log_alpha)))
    C = min(C, T)
    LA = to_chunks(log_alpha, C).cumsum(-2)                          # (B, H, N, C, M)
    if -LA[..., -1, :].min().item() >= _factorise_limit(dt):
        return None
    qc, kc, sc = (to_chunks(t, C) for t in (q.to(dt) * scale, k, s))
    eL, L_end = LA.exp(), LA[..., -1:, :]
    intra = (qc @ kc.transpose(-1, -2)).tril_() @ (sc * (-LA).exp())  # in place: one pass
    updates = kc.transpose(-1, -2) @ (sc * (L_end - LA).exp())      # (B, H, N, K, M)
    hk = (torch.zeros(B, H, K, M, dtype=dt, device=q.device) if hk0 is None else hk0.to(dt))
    starts = []
    for dec_n, upd_n in zip(L_end.exp().unbind(2), updates.unbind(2)):
        starts.append(hk)
        hk = hk * dec_n + upd_n
    scores = eL * (intra + qc @ torch.stack(starts, 2))
    return poison(from_chunks(scores, T), marks.outputs).to(out_dtype), poison(hk, marks.state)
