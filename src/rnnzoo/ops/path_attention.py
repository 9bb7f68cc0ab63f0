"""PaTH attention in chunks (Yang et al. 2025, arXiv:2505.16381, section 3): the Householder
products between key and query in their UT (WY) form inside a chunk, whole chunk products
between chunks, and softmax attention over exactly the causal blocks.

Per head, H_t = I - beta_t w_t w_t^T and s_ts = q_t^T H_t ... H_{s+1} k_s (s <= t). In a
chunk of C steps (rows q_t, k_t, w_t of Q, K, W; strictly lower part SL, lower part tril):

    (I + SL(diag(beta) W W^T)) [Y | Z] = [diag(beta) W | SL(diag(beta) W K^T)]   (UT transform)
    H_t ... H_1          = I - W_{<=t}^T Y_{<=t}           (first rows of Y)
    intra scores          = tril(Q K^T) - tril(Q W^T) Z      (s <= t inside the chunk)
    Q' = Q - tril(Q W^T) Y      rows q_t^T H_t ... H_1        (queries moved to the chunk start)
    K' = K - Z^T W              rows (H_C ... H_{s+1} k_s)^T  (keys moved to the chunk end)
    P  = I - W^T Y              the chunk's whole product H_C ... H_1

Keys of earlier chunks moved to the start of chunk n: K^(n+1) = [K^(n) P_n^T ; K'_n], so the
scores of chunk n against them are Q'_n K^(n)T, one matrix product a chunk. Keys of a cache
(already moved to the first new step) meet the queries moved further back,
Q'_n P_{n-1} ... P_0, which costs C rows a chunk instead of the cache's L rows.

    o = softmax(scale * [cache scores | K^(n) scores | intra scores]) [V_cache ; V]

A custom autograd Function keeps only the per-chunk pieces and recomputes each chunk's
probabilities in its backward (no (B, H, T, T) tensor is saved).
"""

from __future__ import annotations

import torch

from rnnzoo.ops.chunk._common import to_chunks, unit_lower_solve
from rnnzoo.ops.finite import finite_inputs, poison

__all__ = ["path_attention"]


def path_attention(q, k, v, w, beta, *, scale, chunk_size=64, k_cache=None, v_cache=None,
                   cache_visible=None):
    """q, k, v, w: (B, T, H, Dh) (w of unit norm), beta: (B, T, H); optional cache of earlier
    tokens: k_cache (B, H, L, Dh) their keys moved through every reflection so far, v_cache
    (B, H, L, Dh) (finite), cache_visible (B, L) bool, the slots that hold a token (the
    others are read as empty: zero keys, never attended).
    v must be finite (the caller marks outputs that read a non-finite value).

    Returns o (B, T, H, Dh), the new keys moved to the last step (B, H, T, Dh), and the cache's
    keys moved through the new reflections (B, H, L, Dh, zero in empty slots; None without a
    cache). A non-finite
    q, k, w or beta at step t makes the outputs from t on NaN (ops.finite), and both keys."""
    B, T, H, D = q.shape
    (q,), (k, w, beta), marks = finite_inputs((q,), (k, w, beta))
    C = min(chunk_size, T)
    q, k, v, w = (to_chunks(t, C) for t in (q, k, v, w))            # (B, H, N, C, D)
    beta = to_chunks(beta[..., None], C)
    wb = w * beta
    N = q.shape[2]
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = lower.tril(-1)
    A = (wb @ w.transpose(-1, -2)) * strict
    YZ = unit_lower_solve(A, torch.cat([wb, (wb @ k.transpose(-1, -2)) * strict], -1))
    Y, Z = YZ.split([D, C], -1)
    qw = (q @ w.transpose(-1, -2)) * lower
    q1 = q - qw @ Y                                                   # Q'
    intra = ((q @ k.transpose(-1, -2)) * lower - qw @ Z).masked_fill(~lower, float("-inf"))
    k1 = k - Z.transpose(-1, -2) @ w                                  # K'
    eye = torch.eye(D, dtype=q.dtype, device=q.device)
    P = eye - w.transpose(-1, -2) @ Y                                 # (B, H, N, D, D)

    outs = []
    keys = q.new_zeros(B, H, 0, D)                                    # K^(n)
    cached = k_cache is not None
    if cached:
        hide = ~cache_visible[:, None, :, None]
        kc = k_cache.to(q.dtype).masked_fill(hide, 0)                 # empty slots hold nothing
        vc, hide = v_cache.to(q.dtype), hide.transpose(-1, -2)
        back = eye.expand(B, H, D, D)                                 # P_{n-1} ... P_0
    values = v.flatten(2, 3)
    for n in range(N):
        parts = []
        if cached:
            parts.append(((q1[:, :, n] @ back) @ kc.transpose(-1, -2)).masked_fill(hide, float("-inf")))
            back = P[:, :, n] @ back
        if n:
            parts.append(q1[:, :, n] @ keys.transpose(-1, -2))
        parts.append(intra[:, :, n])
        p = (torch.cat(parts, -1) * scale).softmax(-1)
        o = p[..., -(n + 1) * C:] @ values[:, :, :(n + 1) * C]
        if cached:
            o = o + p[..., :kc.shape[2]] @ vc
        outs.append(o)
        keys = torch.cat([keys @ P[:, :, n].transpose(-1, -2), k1[:, :, n]], 2)
    o = torch.stack(outs, 2).movedim(1, 3).reshape(B, N * C, H, D)[:, :T]
    keys = keys[:, :, :T]
    moved = kc @ back.transpose(-1, -2) if cached else None
    return poison(o, marks.outputs), poison(keys, marks.state), \
        None if moved is None else poison(moved, marks.state)
