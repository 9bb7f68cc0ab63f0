"""ops.native.cells under create_graph: `_NativeLoop.twice` replays the cell's plain step
loop (cells.manual.manual_plain; with the projection x w_in^T first for scan_projected)
through autograd over the node's original inputs: the second derivative in x, the initial
state and every parameter of the fused (C loop) mode, against a central difference."""

from __future__ import annotations

import pytest
import torch
from _cells import D, perturbed, second_derivative_matches
from torch.func import functional_call

from rnnzoo.cells import manual
from rnnzoo.ops import native
from rnnzoo.ops.native import cells as native_cells

B, T = 2, 3

# lstm as a cell, gru (its auto mode), slstm, and three more C files (ode_cells.c,
# searched_cells.c's projected loop, simple_gated.c)
CASES = [("gru", {}), ("lstm", {"peepholes": True}), ("slstm", {"num_heads": 2}),
         ("ltc", {"ode_unfolds": 2}), ("nas", {}), ("ran", {})]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_native_loop_second_derivative(name, options, monkeypatch):
    monkeypatch.setenv("RNNZOO_NATIVE", "1")
    cell = perturbed(name, **options)
    if native.load(cell.manual_native().file) is None:
        pytest.skip("no C compiler")
    n = []
    real = native_cells._NativeLoop.apply
    monkeypatch.setattr(native_cells._NativeLoop, "apply", lambda *a: n.append(1) or real(*a))
    monkeypatch.setattr(manual._ManualLoop, "apply", None)  # not the Python loop
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    s0 = tuple(torch.randn(B, k, generator=g, dtype=torch.float64) for k in cell.state_sizes)
    names = [k for k, _ in cell.named_parameters()]

    def f(x, *rest):
        state, ps = rest[:len(s0)], rest[len(s0):]
        y, s = functional_call(cell, dict(zip(names, ps)), (x, tuple(state), True))
        return (y, *s)

    inputs = [x.clone().requires_grad_(), *(s.clone().requires_grad_() for s in s0),
              *(p.detach().clone().requires_grad_() for p in cell.parameters())]
    second_derivative_matches(f, inputs)
    assert n  # the C loop ran, and under create_graph its twice
