"""Lattice's orthogonal state recurrence (Karami & Mirrokni 2025, "Lattice: Learning to
Efficiently Compress the Memory", arXiv:2504.05646, section 3).

The state S (K x V per head) is K memory slots, its rows s_i, each kept at unit norm. A
token's key k_t (K) is the code that reconstructs its value from the slots, v_t ~ S^T k_t;
one gradient step on the reconstruction loss 1/2 |v_t - S^T k_t|^2, taken for each slot on
the unit sphere (the gradient projected onto the slot's tangent plane, then the slot
renormalised: Riemannian gradient descent), is

    e_t     = v_t - S_{t-1}^T k_t                               (the reconstruction error)
    u_t,i   = e_t - (s_i . e_t) s_i                             (its part orthogonal to slot i)
    s_t,i   = (s_i + beta_t k_t,i u_t,i) / |s_i + beta_t k_t,i u_t,i|
    o_t     = S_t^T q_t

so a slot takes in only what is new to it, and since u_t,i is orthogonal to the unit s_i the
normaliser is sqrt(1 + beta^2 k_i^2 |u_t,i|^2) >= 1: a state- and input-dependent forget
gate, and a slot turns by less than 90 degrees per step (it is never overwritten by a value
along itself). Tensors: q, k, v (B, T, H, K|V), beta (B, T, H), S (B, H, K, V); states in
float32 (float64 for float64 input). The paper's chunkwise form approximates this
recurrence (it freezes the slots' directions inside a chunk), so it is not offered as an
exact mode; `lattice_sequential` is the reference.
"""

from __future__ import annotations

import torch

__all__ = ["lattice_step", "lattice_sequential"]


def lattice_step(q_t, k_t, v_t, beta_t, S, eps: float = 1e-12):
    """One step: q_t, k_t (B, H, K), v_t (B, H, V), beta_t (B, H), S (B, H, K, V).
    Returns (o_t (B, H, V), S_t)."""
    e = v_t - torch.einsum("bhk,bhkv->bhv", k_t, S)
    u = e[:, :, None] - (S * e[:, :, None]).sum(-1, keepdim=True) * S     # (B, H, K, V)
    S = S + (beta_t[..., None] * k_t)[..., None] * u
    S = S / torch.linalg.vector_norm(S, dim=-1, keepdim=True).clamp_min(eps)
    return torch.einsum("bhk,bhkv->bhv", q_t, S), S


def lattice_sequential(q, k, v, beta, S):
    """The reference: lattice_step over time. Returns (o (B, T, H, V), S)."""
    out = []
    for t in range(q.shape[1]):
        o, S = lattice_step(q[:, t], k[:, t], v[:, t], beta[:, t], S)
        out.append(o)
    return torch.stack(out, 1), S
