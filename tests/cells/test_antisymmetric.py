"""AntisymmetricRNN and its gated form (Chang et al. 2019)."""

from __future__ import annotations

import pytest
import torch
from _cells import F64, randomised, step


def test_antisymmetric_euler_step_grows_the_norm_exactly():
    """With phi = identity, gamma = 0 and no input, h^T A h = 0 for A = W - W^T, so
    ||h_t||^2 = ||h_{t-1}||^2 + eps^2 ||A h_{t-1}||^2 (forward Euler on a rotation)."""
    eps = 0.2
    cell = randomised("antisymmetric_rnn", epsilon=eps, gamma=0.0, nonlinearity="identity")
    with torch.no_grad():
        cell.weight_ih.zero_(), cell.bias_ih.zero_(), cell.bias_hh.zero_()
    h0 = torch.randn(3, 5, dtype=F64)
    h1 = step(cell, torch.zeros(3, 4, dtype=F64), (h0,))[0]
    a = cell.weight_hh - cell.weight_hh.T
    expected = (h0 ** 2).sum(-1) + eps ** 2 * ((h0 @ a.T) ** 2).sum(-1)
    torch.testing.assert_close((h1 ** 2).sum(-1), expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["antisymmetric_rnn", "gated_antisymmetric_rnn"])
def test_antisymmetric_cells_see_only_the_antisymmetric_part(name):
    """The recurrence uses W - W^T: adding a symmetric matrix to W changes nothing."""
    cell = randomised(name)
    x, h0 = torch.randn(2, 6, 4, dtype=F64), torch.randn(2, 5, dtype=F64)
    y = cell.loop(x, (h0,))[0]
    s = torch.randn(5, 5, dtype=F64)
    with torch.no_grad():
        cell.weight_hh += s + s.T
    torch.testing.assert_close(cell.loop(x, (h0,))[0], y, rtol=1e-12, atol=1e-13)
