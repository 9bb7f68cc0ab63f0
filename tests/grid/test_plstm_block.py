"""pLSTM's block recursion (mode "block", grid/plstm.dag_block) against the loop: the grid
recurrence alone on sizes that are not powers of two (odd block counts padded at several
levels), with unnormalised transitions and gradients; the layer in P- and D-mode, one and
four orientations, from a random starting state, outputs, states and gradients to 1e-10
in float64; `mode="auto"` picks it from 8 x 8 cells up."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.grid import create_grid
from rnnzoo.grid.dag import dag_sequential
from rnnzoo.grid.plstm import dag_block


@pytest.mark.parametrize("X, Y", [(1, 1), (1, 6), (5, 1), (3, 5), (4, 4), (7, 3), (6, 11),
                                  (13, 5)])
def test_block_recursion_equals_the_loop(X, Y):
    """Random transitions (not normalised: every path's weight differs), sources and
    borders; every edge state, both borders leaving the grid, and the gradients."""
    torch.manual_seed(X * 31 + Y)
    n, K, V = 2, 2, 3
    T = torch.rand(n, X, Y, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, X, Y, 2, K, V, dtype=torch.float64, requires_grad=True)
    left = torch.randn(n, X, K, V, dtype=torch.float64, requires_grad=True)
    top = torch.randn(n, Y, K, V, dtype=torch.float64, requires_grad=True)
    ref = dag_sequential(T[..., None, None], b, left, top)
    got = dag_block(T, b, left, top)
    weights = [torch.randn_like(r) for r in ref]
    ref_g = torch.autograd.grad(sum((w * r).sum() for w, r in zip(weights, ref)),
                                [T, b, left, top])
    got_g = torch.autograd.grad(sum((w * g).sum() for w, g in zip(weights, got)),
                                [T, b, left, top])
    for a, r in zip([*got, *got_g], [*ref, *ref_g]):
        assert a.shape == r.shape
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("propagation", ["P", "D"])
@pytest.mark.parametrize("orientations", [1, 4])
@pytest.mark.parametrize("X, Y", [(3, 5), (6, 3)])
def test_block_mode_equals_sequential(propagation, orientations, X, Y):
    torch.manual_seed(0)
    layer = create_grid("plstm", 6, num_heads=2, propagation=propagation,
                        orientations=orientations).double()
    assert "block" in layer.modes
    with torch.no_grad():
        layer.gates.weight.normal_()            # gates that vary from cell to cell
    x = torch.randn(2, X, Y, 6, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn_like(s, requires_grad=True)
                  for s in layer.init_state(2, X, Y, dtype=torch.float64))
    wanted = [x, *state, *layer.parameters()]
    out = {}
    for mode in ("sequential", "block"):
        y, s = layer(x, state, mode=mode)
        loss = y.square().sum() + sum((w * t).sum() for w, t in zip((1.5, -0.5), s))
        out[mode] = (y, *s, *torch.autograd.grad(loss, wanted))
    assert out["block"][1].shape == (2, orientations, 2, X, 3, 3)   # every orientation's frame
    for a, r in zip(out["block"], out["sequential"]):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_auto_takes_block_from_eight_by_eight():
    layer = create_grid("plstm", 4, num_heads=2)
    assert layer.auto_mode(torch.empty(1, 8, 8, 4)) == "block"
    assert layer.auto_mode(torch.empty(1, 16, 9, 4)) == "block"
    assert layer.auto_mode(torch.empty(1, 7, 32, 4)) == "wavefront"
    assert layer.auto_mode(torch.empty(1, 3, 5, 4)) == "wavefront"


def test_block_mode_keeps_float32_states_and_the_device():
    torch.manual_seed(0)
    layer = create_grid("plstm", 4, num_heads=2).to(torch.bfloat16)
    x = torch.randn(1, 9, 10, 4, dtype=torch.bfloat16)
    y, (right, bottom) = layer(x, mode="block")
    y32, (right32, bottom32) = layer.float()(x.float(), mode="block")
    assert y.dtype == torch.bfloat16 and right.dtype == bottom.dtype == torch.float32
    for a, r in ((y.float(), y32), (right, right32), (bottom, bottom32)):
        torch.testing.assert_close(a, r, rtol=0.05, atol=0.05)
    layer = layer.to("meta")
    y, state = layer(torch.empty(1, 9, 10, 4, device="meta"), mode="block")
    assert y.device.type == "meta" and all(s.device.type == "meta" for s in state)
