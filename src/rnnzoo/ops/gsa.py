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

States: hk (B, H, K, M) and hv = V~ (B, H, M, V), fla's layout; their size does not depend
on the sequence length.
"""

from __future__ import annotations

from rnnzoo.checks import choice, positive_int
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent

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
    # pass 1: slot m is a head of key width K, value width 1, scalar decay alpha_m
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
