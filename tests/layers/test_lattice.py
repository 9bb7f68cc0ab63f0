"""Lattice (arXiv:2504.05646): the orthogonal state recurrence written slot by slot as a plain
loop, and the facts that define it: slots stay on the unit sphere, a slot only ever takes in
the part of the update orthogonal to itself (a value already along a slot never overwrites
it, which a plain normalised gradient step would), the normaliser is the gate
sqrt(1 + beta^2 k_i^2 |u_i|^2), and the step is Riemannian gradient descent on the sphere:
the gradient of the loss taken through the slots' normalisation (autograd), then the slots
renormalised."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.lattice import lattice_sequential, lattice_step


def perturbed(**kw):
    torch.manual_seed(0)
    layer = rnnzoo.create("lattice", d_model=8, num_heads=2, head_dim=4, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def loop(q, k, v, beta, S):
    """The paper's update, one slot (row of S) at a time: e = v - S^T k, then for each slot
    s_i <- normalise(s_i + beta k_i (I - s_i s_i^T / |s_i|^2) e); read S^T q."""
    B, T, H, m = q.shape
    S = S.clone()
    out = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                e = v[b, t, h] - S[b, h].T @ k[b, t, h]
                new = S[b, h].clone()
                for i in range(m):
                    s = S[b, h, i]
                    P = torch.eye(len(s), dtype=s.dtype) - torch.outer(s, s) / (s @ s)
                    w = s + beta[b, t, h] * k[b, t, h, i] * (P @ e)
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


def test_num_slots_is_the_number_of_memory_slots():
    """m slots of width head_dim: keys and queries are m-dim codes over the slots, the state
    (B, H, m, V); the layer equals the loop there too."""
    layer = perturbed(num_slots=3)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    S0, conv = layer.init_state(2, dtype=torch.float64)
    assert S0.shape == (2, 2, 3, 4) and layer.slots.shape == (2, 3, 4)
    with torch.no_grad():
        q, k, v, beta, _ = layer.op_inputs(x, conv)
        assert q.shape == k.shape == (2, 6, 2, 3) and v.shape == (2, 6, 2, 4)
        _, S_ref = loop(q, k, v, beta, S0)
        y, (S_layer, _) = layer(x)
    assert y.shape == x.shape and (S_layer - S_ref).abs().max() < 1e-12


def test_the_step_is_riemannian_gradient_descent_on_the_sphere():
    """Proposition 3.1's reading: with the loss 1/2 |v - N(S)^T k|^2 on the normalised slots
    N(S), autograd's gradient at unit slots is the Euclidean gradient -k_i e projected onto
    each slot's tangent plane, and a step along it followed by renormalising is the op."""
    torch.manual_seed(2)
    B, H, m, V = 2, 3, 4, 5
    S = torch.nn.functional.normalize(torch.randn(B, H, m, V, dtype=torch.float64), dim=-1)
    q, k = torch.nn.functional.normalize(torch.randn(2, B, H, m, dtype=torch.float64), dim=-1)
    v = 2 * torch.randn(B, H, V, dtype=torch.float64)
    beta = torch.rand(B, H, dtype=torch.float64) + 0.2
    W = S.clone().requires_grad_()
    N = W / W.norm(dim=-1, keepdim=True)
    loss = 0.5 * (v - torch.einsum("bhk,bhkv->bhv", k, N)).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, W)
    euclid = -k[..., None] * (v - torch.einsum("bhk,bhkv->bhv", k, S))[:, :, None]
    tangent = euclid - (euclid * S).sum(-1, keepdim=True) * S
    assert (grad - tangent).abs().max() < 1e-12
    assert (grad * S).sum(-1).abs().max() < 1e-12                       # in the tangent planes
    step = S - beta[..., None, None] * grad
    _, S1 = lattice_step(q, k, v, beta, S)
    assert (S1 - step / step.norm(dim=-1, keepdim=True)).abs().max() < 1e-12


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


def test_the_projection_divides_by_the_slots_norm():
    """(I - s s^T / |s|^2): a slot handed in off the sphere (norm 2) with the error along it is
    only renormalised. Projecting with s s^T alone would give s + e - (s.e) s = -s / 2: a flip."""
    S = 2 * torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0].T[None, None]
    k = torch.zeros(1, 1, 3, dtype=torch.float64)
    k[..., 0] = 1
    v = 1.5 * S[:, :, 0]                                               # error = s_0 / 2
    _, S1 = lattice_step(k, k, v, torch.ones(1, 1, dtype=torch.float64), S)
    assert (S1 - S / 2).abs().max() < 1e-12


def test_each_slot_turns_by_the_gate_and_less_than_a_right_angle():
    """s_t . s_t-1 = 1 / sqrt(1 + beta^2 k_i^2 |u_i|^2) > 0 for every slot and step, and the
    part of s_t orthogonal to s_t-1 is that gate times beta k_i u_i: all that was written."""
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
    u = e[:, :, None] - torch.einsum("bhkv,bhv->bhk", S, e)[..., None] * S
    written = S1 - cos[..., None] * S
    assert (written - (cos * beta[..., None] * k)[..., None] * u).abs().max() < 1e-12


def test_a_slot_the_code_does_not_address_is_left_alone():
    torch.manual_seed(3)
    S = torch.nn.functional.normalize(torch.randn(1, 1, 4, 6, dtype=torch.float64), dim=-1)
    k = torch.tensor([[[0.6, 0.0, 0.8, 0.0]]], dtype=torch.float64)
    v = torch.randn(1, 1, 6, dtype=torch.float64)
    _, S1 = lattice_step(k, k, v, torch.ones(1, 1, dtype=torch.float64), S)
    assert (S1[:, :, [1, 3]] - S[:, :, [1, 3]]).abs().max() < 1e-15
    assert (S1[:, :, [0, 2]] - S[:, :, [0, 2]]).abs().min() > 1e-3


def test_slots_stay_on_the_sphere_for_1000_float32_steps():
    torch.manual_seed(4)
    layer = rnnzoo.create("lattice", d_model=8, num_heads=2, head_dim=4, num_slots=3)
    with torch.no_grad():
        layer.beta_proj.bias.fill_(3.0)                               # beta ~ 0.95: big steps
        _, (S, _) = layer(4 * torch.randn(2, 1000, 8))
    assert S.dtype == torch.float32
    assert (torch.linalg.vector_norm(S, dim=-1) - 1).abs().max() < 1e-6


def test_options_checked():
    with pytest.raises(ValueError, match="num_heads"):
        rnnzoo.create("lattice", d_model=8, num_heads=0)
    with pytest.raises(ValueError, match="num_slots"):
        rnnzoo.create("lattice", d_model=8, num_heads=2, num_slots=0)
