"""FastRNN and FastGRNN (Kusupati et al. 2018)."""

from __future__ import annotations

import torch
from _cells import F64, randomised, step

from rnnzoo.registry import CELLS


def test_fastrnn_residual_weights_start_as_the_authors():
    """Kusupati et al. 2018: h_t = alpha h~_t + beta h_{t-1}, alpha, beta = sigmoid(raw)
    starting at alpha ~ 0.05, beta ~ 0.95; with U = 0 and no input, h_T = beta^T h_0."""
    cell = CELLS["fastrnn"].cls(4, 5).double()
    beta = torch.sigmoid(cell.beta)
    assert abs(torch.sigmoid(cell.alpha).item() - 0.0474) < 1e-3 and abs(beta.item() - 0.9526) < 1e-3
    with torch.no_grad():
        cell.weight_hh.zero_(), cell.bias_ih.zero_(), cell.bias_hh.zero_()
    h0 = torch.randn(2, 5, dtype=F64)
    _, (h,) = cell.loop(torch.zeros(2, 9, 4, dtype=F64), (h0,))
    torch.testing.assert_close(h, beta ** 9 * h0, rtol=1e-13, atol=0)


def test_fastgrnn_step_is_the_papers():
    """Kusupati et al. 2018: gate and candidate share W and U."""
    cell = randomised("fastgrnn")
    x, h0 = torch.randn(3, 4, dtype=F64), torch.randn(3, 5, dtype=F64)
    pre = x @ cell.weight_ih.T + h0 @ cell.weight_hh.T
    b_z, b_h = (cell.bias_ih + cell.bias_hh).chunk(2)
    z, cand = torch.sigmoid(pre + b_z), torch.tanh(pre + b_h)
    zeta, nu = torch.sigmoid(cell.zeta), torch.sigmoid(cell.nu)
    torch.testing.assert_close(step(cell, x, (h0,))[0], (zeta * (1 - z) + nu) * cand + z * h0,
                               rtol=1e-13, atol=1e-14)
