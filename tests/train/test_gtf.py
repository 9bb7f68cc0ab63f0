"""Generalized teacher forcing (Hess et al. 2023) for the piecewise-linear RNNs: alpha = 1 is
teacher forcing of the observed units, alpha = 0 the free run, in between the forced state
alpha x_t + (1 - alpha) z_t; the bound alpha* from the Jacobians; the annealing rule."""

import pytest
import torch

from rnnzoo.cells.piecewise_linear import (
    ALRNN,
    PLRNN,
    free_run,
    gtf_alpha_bound,
    gtf_anneal,
    gtf_rollout,
)

F64 = torch.float64


def cell(kind=ALRNN, M=6, seed=0):
    torch.manual_seed(seed)
    c = (kind(1, M, num_relu=3) if kind is ALRNN else kind(1, M)).double()
    with torch.no_grad():
        c.h.normal_()
    return c


def step(c, z):
    """z_{t+1} = A z + W_offdiag Phi*(z) + h, written out."""
    W = c.W * (1 - torch.eye(c.hidden_size, dtype=F64))
    return c.A * z + c.phi(z) @ W.T + c.h


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_rollout_forces_the_observed_units(alpha):
    c = cell()
    x = torch.randn(2, 7, 3, dtype=F64)
    pred, forced = gtf_rollout(c, x, alpha)
    z = torch.cat([x[:, 0], torch.zeros(2, 3, dtype=F64)], -1)
    for t in range(6):
        if t:
            z = torch.cat([alpha * x[:, t] + (1 - alpha) * z[:, :3], z[:, 3:]], -1)
        assert (forced[:, t] - z).abs().max() < 1e-13
        z = step(c, z)
        assert (pred[:, t] - z[:, :3]).abs().max() < 1e-13


def test_alpha_zero_is_the_free_run_and_one_reads_the_data():
    c = cell(PLRNN)
    x = torch.randn(2, 9, 3, dtype=F64)
    pred, _ = gtf_rollout(c, x, 0.0)
    z0 = torch.cat([x[:, 0], torch.zeros(2, 3, dtype=F64)], -1)
    assert (pred - free_run(c, z0, 8)[..., :3]).abs().max() < 1e-13
    _, forced = gtf_rollout(c, x, 1.0)
    assert torch.equal(forced[..., :3], x[:, :-1])


def test_alpha_bound_from_the_jacobians():
    c = cell()
    z = torch.randn(5, 6, dtype=F64) * 2
    norms = torch.stack([torch.linalg.matrix_norm(torch.autograd.functional.jacobian(
        lambda v: step(c, v), zi), ord=2) for zi in z])
    G = norms.log().mean().exp()
    assert abs(gtf_alpha_bound(c, z) - max(0.0, 1 - 1 / float(G))) < 1e-12
    with torch.no_grad():  # a contracting map needs no forcing
        c.A.fill_(0.1)
        c.W.mul_(0.01)
    assert gtf_alpha_bound(c, z) == 0.0


def test_annealing_decays_to_the_bound():
    a = 1.0
    for _ in range(2000):
        a = gtf_anneal(a, 0.25, gamma=0.99)
    assert a == 0.25
    assert gtf_anneal(0.8, 0.1, 0.9) == pytest.approx(0.72)
