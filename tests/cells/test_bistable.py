"""Bistable recurrent cells (Vecoven et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch

from rnnzoo.registry import CELLS

F64 = torch.float64


def randomised(name, input_size=4, hidden_size=5, scale=0.6, **options):
    torch.manual_seed(0)
    cell = CELLS[name].cls(input_size, hidden_size, **options).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(scale * torch.randn_like(p))
    return cell


def step(cell, x, state):
    return cell.recur(cell.project(x), state)


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
