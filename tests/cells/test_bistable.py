"""Bistable recurrent cells (Vecoven et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch
from _cells import F64, randomised, step


@pytest.mark.parametrize("b_a, bistable", [(2.0, True), (-2.0, False)])
def test_br_is_bistable_when_a_exceeds_one(b_a, bistable):
    """Vecoven et al. 2021: without input, h = tanh(a h) has two stable fixed points
    +-h* when a > 1 (the memory), and only 0 when a < 1."""
    cell = randomised("br", hidden_size=2)
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.bias_hh[:2] = b_a  # a = 1 + tanh(b_a); c = sigmoid(0) = 1/2
    a = 1 + math.tanh(b_a)
    fixed = 0.5
    for _ in range(2000):
        fixed = math.tanh(a * fixed)
    h = torch.tensor([[0.3, -0.3]], dtype=F64)
    for _ in range(300):
        h = step(cell, torch.zeros(1, 4, dtype=F64), (h,))[0]
    if bistable:
        assert fixed > 0.9
        torch.testing.assert_close(h, torch.tensor([[fixed, -fixed]], dtype=F64))
    else:
        assert h.abs().max() < 1e-6
