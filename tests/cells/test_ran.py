"""Recurrent Additive Network (Lee et al. 2017): the state is a gated sum of contents."""

from __future__ import annotations

import pytest
import torch
from _cells import H, T, data, perturbed


@pytest.mark.parametrize("nonlinearity", ["tanh", "identity"])
def test_ran_state_is_a_gated_sum_of_contents(nonlinearity):
    """Lee et al. 2017: c_T = sum_j (i_j prod_{k>j} f_k) W_cx x_j + (prod_k f_k) c_0:
    the state is a component-wise weighted sum of the input's linear contents."""
    cell = perturbed("ran", nonlinearity=nonlinearity)
    x, s0 = data(n_state=(H, H))
    ys, (_, c_T) = cell.loop(x, s0)
    hs = torch.cat([s0[0].unsqueeze(1), ys[:, :-1]], 1)  # h_{t-1} for every t
    gates = x @ cell.weight_ih[H:].T + cell.bias_ih + cell.bias_hh + hs @ cell.weight_hh.T
    i, f = torch.sigmoid(gates).chunk(2, -1)
    contents = x @ cell.weight_ih[:H].T
    expected = f.prod(1) * s0[1]
    for j in range(T):
        expected = expected + i[:, j] * f[:, j + 1:].prod(1) * contents[:, j]
    assert torch.allclose(c_T, expected, atol=1e-13, rtol=0)
