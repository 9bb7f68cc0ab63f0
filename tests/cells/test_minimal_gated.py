"""Cells with one or two gates: CFN's decay without input, MGU's gated candidate."""

from __future__ import annotations

import pytest
import torch
from _cells import F64, randomised, second_derivative_matches, step

import rnnzoo
from rnnzoo.cells.parts import hard_sigmoid


def test_cfn_decays_monotonically_without_input():
    """Laurent & von Brecht 2017: with zero input, h_t = theta_t * tanh(h_{t-1}), so
    every |h_t| decreases strictly to 0 (no chaos)."""
    cell = randomised("cfn", scale=1.5)
    with torch.no_grad():
        cell.bias_ih[10:] = 0  # the candidate tanh(W x + b) is 0 at x = 0
    h = 2 * torch.randn(3, 5, dtype=F64)
    for _ in range(40):
        new = step(cell, torch.zeros(3, 4, dtype=F64), (h,))[0]
        assert (new.abs() < h.abs()).all()
        h = new


def test_mgu_candidate_reads_the_gated_state():
    """Zhou et al. 2016: h~ = tanh(W_h x + U_h (f * h) + b)."""
    cell = randomised("mgu")
    x, h0 = torch.randn(3, 4, dtype=F64), torch.randn(3, 5, dtype=F64)
    (w_f, w_h), (u_f, u_h) = cell.weight_ih.chunk(2), cell.weight_hh.chunk(2)
    (bi_f, bi_h), (bh_f, bh_h) = cell.bias_ih.chunk(2), cell.bias_hh.chunk(2)
    f = torch.sigmoid(x @ w_f.T + bi_f + h0 @ u_f.T + bh_f)
    cand = torch.tanh(x @ w_h.T + bi_h + (f * h0) @ u_h.T + bh_h)
    torch.testing.assert_close(step(cell, x, (h0,))[0], (1 - f) * h0 + f * cand,
                               rtol=1e-13, atol=1e-14)



def test_hard_sigmoid_is_torchs_and_differentiable_twice():
    """cells.parts.hard_sigmoid: F.hardsigmoid's values and first derivative bit for bit
    (float32 and float64), and a second derivative (0 almost everywhere) where torch's
    hardsigmoid_backward has none."""
    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(-4, 4, 41, dtype=dtype).requires_grad_()
        y, y_ref = hard_sigmoid(x), torch.nn.functional.hardsigmoid(x)
        assert torch.equal(y, y_ref)
        g = torch.randn(41, dtype=dtype)
        a = torch.autograd.grad(y, x, g)[0]
        b = torch.autograd.grad(y_ref, x, g)[0]
        c = torch.autograd.grad(hard_sigmoid(x), x, g, create_graph=True)[0]
        assert torch.equal(a, b) and torch.equal(c.detach(), b)
        assert not c.requires_grad  # piecewise linear: nothing left to differentiate


def test_hard_sigmoid_saturates_at_inf_with_grad():
    """+-inf (a pre-activation that overflowed) gives F.hardsigmoid's 1 and 0, and a zero
    gradient, also when x requires grad (a 0/1 mask times x made inf * 0 = NaN there)."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([float("-inf"), -1e30, -1.0, 0.5, 1e30, float("inf")], dtype=dtype,
                         requires_grad=True)
        y = hard_sigmoid(x)
        assert torch.equal(y, torch.nn.functional.hardsigmoid(x.detach()))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.tensor([0, 0, 1, 1, 0, 0], dtype=dtype)
                           * torch.tensor(1 / 6, dtype=torch.float32).to(dtype))


@pytest.mark.parametrize("name", ["sgu", "dsgu"])
def test_sgu_sequential_second_derivative(name):
    """The reference loop (hard_sigmoid in the update gate) differentiable twice, in x and
    the parameters."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=3, hidden_size=4).double()
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        return (torch.func.functional_call(layer, dict(zip(names, ps)), (x,),
                                           {"mode": "sequential"})[0],)

    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    second_derivative_matches(f, [x, *(p.detach().clone().requires_grad_()
                                       for p in layer.parameters())])
