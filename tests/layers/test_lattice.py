"""Lattice (arXiv:2504.05646): the orthogonal state recurrence written slot by slot as a plain
loop, and the facts that define it: slots stay on the unit sphere, a slot only ever takes in
the part of the update orthogonal to itself (a value already along a slot never overwrites
it, which a plain normalised gradient step would), and the normaliser is the gate
sqrt(1 + beta^2 k_i^2 |u_i|^2)."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.lattice import lattice_sequential, lattice_step


def perturbed():
    torch.manual_seed(0)
    layer = rnnzoo.create("lattice", d_model=8, num_heads=2, head_dim=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def loop(q, k, v, beta, S):
    """The paper's update, one slot (row of S) at a time."""
    B, T, H, K = q.shape
    S = S.clone()
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                e = v[b, t, h] - S[b, h].T @ k[b, t, h]
                new = S[b, h].clone()
                for i in range(K):
                    s = S[b, h, i]
                    u = e - (s @ e) * s
                    w = s + beta[b, t, h] * k[b, t, h, i] * u
                    new[i] = w / w.norm()
                S[b, h] = new
                out[b, t, h] = S[b, h].T @ q[b, t, h]
    return out, S


def test_equals_the_papers_loop():
    layer = perturbed()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    S0, conv = layer.init_state(2, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, beta, _ = layer.op_inputs(x, conv)
        o, S = lattice_sequential(q, k, v, beta, S0)
        o_ref, S_ref = loop(q, k, v, beta, S0)
        y, (S_layer, _) = layer(x)
    assert (o - o_ref).abs().max() < 1e-12 and (S - S_ref).abs().max() < 1e-12
    assert (S_layer - S_ref).abs().max() < 1e-12
    assert (S - S0).abs().max() > 1e-2                               # it did write
    norms = torch.linalg.vector_norm(S_layer, dim=-1)
    assert (norms - 1).abs().max() < 1e-12                           # slots on the sphere


def test_a_value_along_a_slot_never_overwrites_it():
    """Slots orthonormal, key e_0, value -5 s_0: the error -6 s_0 lies along slot 0, so its
    orthogonal part is 0 and the memory is unchanged. A plain gradient step then
    normalisation would flip the slot to -s_0."""
    S = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0].T[None, None]  # rows orthonormal
    k = torch.zeros(1, 1, 4, dtype=torch.float64)
    k[..., 0] = 1
    v = -5 * S[:, :, 0]
    beta = torch.ones(1, 1, dtype=torch.float64)
    _, S1 = lattice_step(k, k, v, beta, S)
    assert (S1 - S).abs().max() < 1e-12
    plain = S[:, :, 0] + beta * (v - S[:, :, 0])                    # -5 s_0: flipped
    assert (plain / plain.norm() + S[:, :, 0]).abs().max() < 1e-12


def test_each_slot_turns_by_the_gate_and_less_than_a_right_angle():
    """s_t . s_t-1 = 1 / sqrt(1 + beta^2 k_i^2 |u_i|^2) > 0 for every slot and step."""
    torch.manual_seed(1)
    S = torch.nn.functional.normalize(torch.randn(2, 3, 4, 5, dtype=torch.float64), dim=-1)
    q, k = torch.randn(2, 2, 3, 4, dtype=torch.float64).unbind(0)
    v = 3 * torch.randn(2, 3, 5, dtype=torch.float64)
    beta = torch.rand(2, 3, dtype=torch.float64) + 0.5
    _, S1 = lattice_step(q, k, v, beta, S)
    e = v - torch.einsum("bhk,bhkv->bhv", k, S)
    u2 = (e * e).sum(-1)[..., None] - torch.einsum("bhkv,bhv->bhk", S, e) ** 2
    cos = (S1 * S).sum(-1)
    assert (cos - (1 + (beta[..., None] * k) ** 2 * u2) ** -0.5).abs().max() < 1e-12
    assert cos.min() > 0 and cos.max() < 1 - 1e-6


def test_options_checked():
    with pytest.raises(ValueError, match="num_heads"):
        rnnzoo.create("lattice", d_model=8, num_heads=0)
