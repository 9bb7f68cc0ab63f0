"""Lattice's orthogonal state recurrence (Karami, Pascanu & Mirrokni, "Lattice: Learning to
Efficiently Compress the Memory", arXiv:2504.05646).

The state of a head is m memory slots s_1..s_m (the rows of S, m x V), each on the unit
sphere. A token's key k_t (m) is the latent code that decodes its value from the slots,
v_t ~ S^T k_t, and the memory takes one gradient step on the reconstruction loss
1/2 |v_t - S^T k_t|^2 for each slot, on the sphere (Riemannian gradient descent: the
Euclidean gradient -k_t,i e_t projected onto the slot's tangent plane, then the slot
retracted to the sphere by normalisation):

    e_t     = v_t - S_{t-1}^T k_t                                (the reconstruction error)
    u_t,i   = (I - s_i s_i^T / |s_i|^2) e_t                      (its part orthogonal to slot i)
    s_t,i   = (s_i + beta_t k_t,i u_t,i) / |s_i + beta_t k_t,i u_t,i|
    o_t     = S_t^T q_t

The projection is also exactly what differentiating the loss through the slots'
normalisation gives (d(s/|s|)/ds = (I - s s^T)/|s| at |s| = 1), which is why normalising
the slots turns plain online gradient descent into this orthogonal update. Since u_t,i is
orthogonal to the unit s_i, the normaliser is g_t,i = (1 + beta^2 k_i^2 |u_t,i|^2)^(-1/2)
<= 1: s_t,i = g (s_i + beta k_i u_i) is a state- and input-dependent forget gate, a slot
turns by atan(beta |k_i| |u_i|) < 90 degrees per step, a slot with k_t,i = 0 or with the
error along itself is left as it was, and the slots stay on the sphere.

Tensors: q, k (B, T, H, m), v (B, T, H, V), beta (B, T, H), S (B, H, m, V); the caller keeps
states in float32 (float64 for float64 input). On the CPU in float32/float64
(`ops.backend.use_native`) `lattice_sequential` runs the C kernel `ops.native.lattice_scan`
(the same recurrence, its backward written by hand). The paper also gives a chunk-wise parallel
*approximation* of this recurrence; it is not offered here (see docs/lattice.md).
"""

from __future__ import annotations

import torch

from rnnzoo.ops import backend
from rnnzoo.ops.native import lattice_scan

__all__ = ["lattice_step", "lattice_sequential"]


def lattice_step(q_t, k_t, v_t, beta_t, S, eps: float = 1e-12):
    """One step: q_t, k_t (B, H, m), v_t (B, H, V), beta_t (B, H), S (B, H, m, V).
    Returns (o_t (B, H, V), S_t)."""
    e = (v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))[:, :, None]             # (B, H, 1, V)
    along = (S * e).sum(-1, keepdim=True) / (S * S).sum(-1, keepdim=True).clamp_min(eps)
    S = S + (beta_t[..., None] * k_t)[..., None] * (e - along * S)           # s_i + beta k_i u_i
    S = S / torch.linalg.vector_norm(S, dim=-1, keepdim=True).clamp_min(eps)
    return torch.einsum("bhk,bhkv->bhv", q_t, S), S


def lattice_sequential(q, k, v, beta, S):
    """The reference: lattice_step over time (in C on the CPU). Returns (o (B, T, H, V), S)."""
    if q.shape[1] and S.numel() and backend.use_native(q, k, v, beta, S):
        lib = lattice_scan.load()
        if lib is not None:
            return lattice_scan.lattice(lib, q, k, v, beta, S, _loop)
    return _loop(q, k, v, beta, S)


def _loop(q, k, v, beta, S):
    out = []
    for t in range(q.shape[1]):
        o, S = lattice_step(q[:, t], k[:, t], v[:, t], beta[:, t], S)
        out.append(o)
    return torch.stack(out, 1), S
