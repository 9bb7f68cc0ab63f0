"""Cells with one or two gates: CFN's decay without input, MGU's gated candidate."""

from __future__ import annotations

import torch
from _cells import F64, randomised, step


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
