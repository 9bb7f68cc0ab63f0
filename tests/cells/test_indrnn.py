"""IndRNN (Li et al. 2018)."""

from __future__ import annotations

import torch
from _cells import F64, randomised

from rnnzoo.registry import CELLS


def test_indrnn_is_a_product_of_its_recurrent_weights():
    """Li et al. 2018: each neuron recurs on itself only; with ReLU, no input and
    h_0 > 0, h_T = u^T * h_0."""
    cell = randomised("indrnn", scale=1.0)
    with torch.no_grad():
        cell.weight_hh.copy_(torch.rand(5, dtype=F64) * 0.9 + 0.1)
        cell.bias_ih.zero_(), cell.bias_hh.zero_()
    h0 = torch.rand(2, 5, dtype=F64) + 0.5
    y, (h,) = cell.loop(torch.zeros(2, 12, 4, dtype=F64), (h0,))
    torch.testing.assert_close(h, cell.weight_hh ** 12 * h0, rtol=1e-13, atol=0)
    assert CELLS["indrnn"].cls.jacobian_structure == "diag"
