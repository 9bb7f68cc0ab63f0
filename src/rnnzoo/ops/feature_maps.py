"""Normalised linear attention through a polynomial feature map (Based, Arora et al. 2024,
arXiv:2402.18668; ReBased, Aksenov et al. 2024, arXiv:2402.10644).

A kernel k(q, k) = phi(q) . phi(k) stands in for exp(q . k):

    taylor:  phi(x) = [1, x, vec(x x^T) / sqrt(2)]     phi(q) . phi(k) = 1 + q.k + (q.k)^2 / 2
    square:  phi(x) = vec(x x^T)                        phi(q) . phi(k) = (q.k)^2

(the second-order Taylor expansion of exp, and ReBased's square of a normalised affine map,
whose normalisation the layer does before). Attention with the kernel, normalised:

    o_t = sum_{s<=t} k(q_t, k_s) v_s / (sum_{s<=t} k(q_t, k_s) + eps)

is a linear attention on the features with the value widened by a column of ones, whose
last output column is the normaliser:

    S_t = S_{t-1} + phi(k_t) [v_t, 1]^T          S: (F, V + 1) per head, F = the feature size
    [num_t, den_t] = S_t^T phi(q_t),              o_t = num_t / (den_t + eps)

so the recurrent and chunkwise forms are ops.chunk.linear's (no decay), and the parallel
form is the masked (T, T) kernel matrix, which never builds the F-wide features of the
sequence's own tokens (only those of q, to read an initial state).
"""

from __future__ import annotations

import math

import torch

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent
from rnnzoo.ops.finite import finite_inputs, poison

__all__ = ["FEATURE_MAPS", "feature_attention", "feature_size", "features", "kernel"]

FEATURE_MAPS = ("taylor", "square")


def feature_size(feature_map: str, d: int) -> int:
    """F, the width of phi(x) for x of width d."""
    return 1 + d + d * d if feature_map == "taylor" else d * d


def features(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """phi(x): (..., d) -> (..., F)."""
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)
    if feature_map == "square":
        return outer
    return torch.cat([torch.ones_like(x[..., :1]), x, outer / math.sqrt(2)], -1)


def kernel(s: torch.Tensor, feature_map: str) -> torch.Tensor:
    """phi(q) . phi(k) from s = q . k."""
    return s * s if feature_map == "square" else 1 + s + 0.5 * s * s


def feature_attention(q, k, v, feature_map: str = "taylor", *, mode: str = "chunk",
                      initial_state=None, eps: float = 1e-12, chunk_size: int = 64):
    """q, k: (B, T, H, d); v: (B, T, H, V); initial_state: (B, H, F, V + 1) or None.
    -> (o (B, T, H, V) in q's dtype, final state (B, H, F, V + 1), float32 / float64).
    mode: "sequential" (the recurrent loop), "chunk" or "parallel" (the kernel matrix)."""
    choice("feature_map", feature_map, FEATURE_MAPS)
    choice("mode", mode, ("sequential", "chunk", "parallel"))
    positive_int("chunk_size", chunk_size)
    B, T, H, _ = q.shape
    V = v.shape[-1]
    if initial_state is None:
        initial_state = torch.zeros(B, H, feature_size(feature_map, q.shape[-1]), V + 1,
                                    device=q.device, dtype=state_dtype(q.dtype))
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    if mode == "parallel":
        o, S = _parallel(q, k, v1, feature_map, initial_state)
    else:
        run = gated_linear_attention_recurrent if mode == "sequential" else gated_linear_attention
        extra = {} if mode == "sequential" else {"chunk_size": chunk_size}
        o, S = run(features(q, feature_map), features(k, feature_map), v1, None, scale=1.0,
                   initial_state=initial_state, **extra)
    return (o[..., :V] / (o[..., V:] + eps)).to(q.dtype), S


def _parallel(q, k, v1, feature_map, S0):
    """o (B, T, H, V + 1), S: the masked kernel matrix plus the initial state's reading."""
    (q,), (k, v1), marks = finite_inputs((q,), (k, v1))
    dt = S0.dtype
    q, k, v1 = (t.to(dt).transpose(1, 2) for t in (q, k, v1))          # (B, H, T, .)
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    A = torch.where(causal, kernel(q @ k.transpose(-1, -2), feature_map), 0.0)
    o = A @ v1 + features(q, feature_map) @ S0
    S = S0 + features(k, feature_map).transpose(-1, -2) @ v1
    return poison(o.transpose(1, 2), marks.outputs), poison(S, marks.state)
