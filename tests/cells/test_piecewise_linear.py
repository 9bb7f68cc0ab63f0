"""PLRNN and AL-RNN (Brenner et al. 2024): the papers' step as a plain loop, a region's
closed-form fixed point reached by the loop, and the AL-RNN's 2^P linear regions."""

from __future__ import annotations

import itertools

import pytest
import torch
from _cells import F64, randomised
from torch.func import jacrev, vmap

import rnnzoo


def oracle(cell, x, z, P):
    """z_t = A z_{t-1} + W Phi*(z_{t-1}) + C s_t + h in float64, W off the diagonal and
    the last P units through a ReLU."""
    A, C, h = cell.A.detach(), cell.C.detach(), cell.h.detach()
    W = cell.W.detach().clone()
    W.fill_diagonal_(0)
    M = A.shape[0]
    out = []
    for t in range(x.shape[1]):
        phi = torch.cat([z[:, :M - P], torch.relu(z[:, M - P:])], 1)
        z = A * z + phi @ W.T + x[:, t] @ C.T + h
        out.append(z)
    return torch.stack(out, 1), z


@pytest.mark.parametrize("name,options,P", [("plrnn", {}, 5), ("al_rnn", {"num_relu": 2}, 2),
                                            ("al_rnn", {"num_relu": 0}, 0)])
@pytest.mark.parametrize("mode", ["sequential", "newton"])
def test_matches_the_papers_equations(name, options, P, mode):
    cell = randomised(name, input_size=5, hidden_size=5, scale=0.4, **options)
    layer = rnnzoo.create(name, d_model=5, **options).double()
    layer.cell.load_state_dict(cell.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 17, 5, generator=g, dtype=F64)
    z0 = torch.randn(3, 5, generator=g, dtype=F64)
    with torch.no_grad():
        want, z_want = oracle(cell, x, z0, P)
        got, z = layer(x, z0, mode=mode)
    err = max((got - want).abs().max().item(), (z - z_want).abs().max().item())
    assert err < 1e-10, err


def _hand_built_plrnn():
    """M = 4, contracting in every linear region (max row sum of |A + W D| < 1); W's own
    diagonal set to junk, which the model must ignore."""
    cell = rnnzoo.registry.CELLS["plrnn"].cls(2, 4).double()
    with torch.no_grad():
        cell.A.copy_(torch.tensor([0.4, 0.5, 0.3, 0.5], dtype=F64))
        cell.W.copy_(torch.tensor([[9.0, 0.1, -0.2, 0.1],
                                   [0.2, 9.0, 0.1, -0.1],
                                   [-0.1, 0.2, 9.0, 0.2],
                                   [0.1, -0.2, 0.1, 9.0]], dtype=F64))
    W = cell.W.detach().clone().fill_diagonal_(0)
    return cell, torch.diag(cell.A.detach()), W


def test_plrnn_reaches_its_regions_closed_form_fixed_point():
    """In the region Omega (a sign pattern of z), the step with no input is affine,
    z -> (A + W D_Omega) z + h, so its fixed point is (I - A - W D_Omega)^{-1} h. Pick the
    fixed point z* in the region (+, -, +, -), set h from it, and the loop started anywhere
    lands on the closed form."""
    cell, A, W = _hand_built_plrnn()
    eye = torch.eye(4, dtype=F64)
    for pattern in itertools.product([0.0, 1.0], repeat=4):  # contracting everywhere
        assert (A + W @ torch.diag(torch.tensor(pattern, dtype=F64))).abs().sum(1).max() < 1
    omega = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    z_star = torch.tensor([1.0, -0.7, 0.4, -1.2], dtype=F64)
    h = (eye - A - W @ torch.diag(omega)) @ z_star
    with torch.no_grad():
        cell.h.copy_(h)
    closed_form = torch.linalg.solve(eye - A - W @ torch.diag(omega), h)
    z0 = 3 * torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        _, (z,) = cell.loop(torch.zeros(8, 200, 2, dtype=F64), (z0,))
    assert (z - closed_form).abs().max() < 1e-12
    assert torch.equal((z > 0).to(F64), omega.expand(8, 4))  # the point lies in its region
    # the region matters: the all-linear region's formula gives another point
    other = torch.linalg.solve(eye - A - W, h)
    assert (other - closed_form).abs().max() > 0.05


def _count_linear_regions(cell, M, points_per_axis=6):
    """Distinct Jacobians d z_t / d z_{t-1} of the step over a dense grid of states."""
    axis = torch.linspace(-1, 1, points_per_axis, dtype=F64)  # 0 is not on the grid
    grid = torch.cartesian_prod(*[axis] * M)
    xp = cell.project(torch.zeros(1, cell.input_size, dtype=F64))[0]
    w = cell.weights(1)

    def f(z):
        return cell.transition((xp.unsqueeze(0),), (z.unsqueeze(0),), w)[0][0]

    with torch.no_grad():
        J = vmap(jacrev(f))(grid)
    return len(torch.unique(J.flatten(1).round(decimals=9), dim=0))


@pytest.mark.parametrize("P", [0, 1, 2, 3, 4])
def test_al_rnn_has_two_to_the_p_linear_regions(P):
    """Brenner et al. 2024: the AL-RNN's state space splits into 2^P linear subregions."""
    cell = randomised("al_rnn", input_size=2, hidden_size=4, num_relu=P)
    assert _count_linear_regions(cell, 4) == 2 ** P


def test_plrnn_has_two_to_the_m_linear_regions():
    cell = randomised("plrnn", input_size=2, hidden_size=4)
    assert _count_linear_regions(cell, 4) == 2 ** 4


def test_bad_options():
    with pytest.raises(ValueError, match=r"num_relu must be an int in \[0, 4\], got 5"):
        rnnzoo.create("al_rnn", d_model=4, num_relu=5)
    assert rnnzoo.create("al_rnn", d_model=4).cell.num_relu == 2
