"""Higher-order gradients on every registered 2-D layer (rnnzoo.registry.GRID_LAYERS) and
every mode of its tiny instance: the create_graph gradient of
F = sum((d sum(y^2) / dx)^2), in x and every parameter, along a random direction, equals a
Richardson central difference, or the documented first-order error is raised (never in
mode "sequential"). x: (batch, height, width, d_model) = (2, 3, 4, d)."""

from __future__ import annotations

import pytest
import torch
from test_second_order import check

from rnnzoo.grid import create_grid
from rnnzoo.registry import GRID_LAYERS


def build(name):
    tiny = dict(GRID_LAYERS[name].tiny)
    d = tiny.pop("d_model")
    torch.manual_seed(0)
    return create_grid(name, d, **tiny).to(torch.float64), d


CASES = [(n, m) for n in sorted(GRID_LAYERS) for m in build(n)[0].modes]


@pytest.mark.parametrize("name,mode", CASES)
def test_second_derivative_grid(name, mode):
    layer, d = build(name)
    g = torch.Generator().manual_seed(3)
    check(layer, torch.randn(2, 3, 4, d, generator=g, dtype=torch.float64), mode)
