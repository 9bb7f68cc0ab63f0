"""Higher-order gradients (docs/design.md, higher-order gradients), on every registered layer
and mode: with create_graph=True the second derivative through the layer, in x and in the
parameters, is right (docs/design.md: no mode raises).

The quantity: F(x, theta) = sum((d sum(y^2) / dx)^2), its gradient (x and every parameter)
by create_graph=True, along a random direction (v, u) against the central difference of F
at (x + e v, theta + e u): a mixed second derivative in x and the parameters. One call per
(layer, mode) on the tiny float64 instance, B = 2, T = 7.
"""

from __future__ import annotations

import pytest
import torch
from test_conformance import MODE_CASES, inputs, make

EPS = 3e-6


def _F(layer, x, mode, create_graph):
    y = layer(x, mode=mode)[0]
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=create_graph)
    return g.square().sum()


def _shifted(layer, mode, x, v, params, u, e):
    """F at (x + e v, theta + e u), the parameters moved in place and put back bit-exactly."""
    keep = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, u):
            p.add_(d, alpha=e)
    try:
        with torch.no_grad():
            z = (x + e * v).requires_grad_()
        with torch.enable_grad():
            return _F(layer, z, mode, False).item()
    finally:
        with torch.no_grad():
            for p, k in zip(params, keep):
                p.copy_(k)


def check(layer, x, mode):
    """The create_graph gradient of F at (x, the layer's parameters) along a random direction
    against a Richardson central difference."""
    x = x.detach().requires_grad_()
    params = [p for p in layer.parameters() if p.requires_grad and p.is_floating_point()]
    g = torch.Generator().manual_seed(3)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    F = _F(layer, x, mode, True)
    grads = torch.autograd.grad(F, [x, *params], allow_unused=True)
    hv = sum((gr * d).sum() for gr, d in zip(grads, [v, *u]) if gr is not None).item()

    def D(h):  # the central difference, error c h^2 + O(h^4)
        return (_shifted(layer, mode, x, v, params, u, h)
                - _shifted(layer, mode, x, v, params, u, -h)) / (2 * h)

    fd = (4 * D(EPS) - D(2 * EPS)) / 3  # Richardson: the h^2 term cancels
    assert abs(hv - fd) <= 1e-5 * abs(fd) + 1e-8 * (1 + abs(F.item())), (hv, fd)


@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_second_derivative(name, mode):
    layer = make(name)
    check(layer, inputs(layer, T=7), mode)
