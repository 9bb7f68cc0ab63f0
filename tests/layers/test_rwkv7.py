"""RWKV-7 facts: the decay stays in the paper's range, and the layer's recurrence is the
generalised delta rule with a = -kappa, b = kappa * a (checked against fla in tests/ops)."""

from __future__ import annotations

import math

import torch

import rnnzoo
from rnnzoo.ops.chunk.delta import rwkv7_recurrent


def test_decay_in_paper_range_and_recurrence_matches_the_op():
    """w = exp(-e^{-0.5} sigmoid(.)) lies in (exp(-e^{-0.5}), 1) even for huge inputs, and
    the layer's state after a sequence is the op's state on the layer's own r, w, k, v, a, b."""
    torch.manual_seed(0)
    layer = rnnzoo.create("rwkv7", d_model=8, num_heads=2, low_rank=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = 100 * torch.randn(2, 9, 8, dtype=torch.float64)
    x_last = torch.zeros(2, 8, dtype=torch.float64)
    r, w, k, v, a, b, g, last = layer.op_inputs(x, x_last)
    assert (w < 0).all() and (w > -math.exp(-0.5)).all()
    assert torch.equal(last, x[:, -1])
    kappa = -a
    assert ((kappa.norm(dim=-1) - 1).abs() < 1e-12).all()     # unit removal key
    _, S = rwkv7_recurrent(r, w, k, v, a, b)
    for mode in layer.modes:
        _, (S_layer, _) = layer(x, mode=mode)
        assert (S_layer - S).abs().max() < 1e-9 * (1 + S.abs().max())
