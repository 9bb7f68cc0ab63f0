"""state_regularized_rnn's `fused` mode: the hand-written backward (cells/manual.py) of the
GRU proposal and the centroid mixture equals the reference loop in float64 (outputs, final
state, gradients of the input, initial state and every parameter), for the GRU base (its
step written in state_regularized.py), a base with its own manual step, hard assignment
and a GRU without biases; a base with neither runs the reference loop."""

import pytest
import torch

from rnnzoo.cells import manual
from rnnzoo.cells.state_regularized import StateRegularized

F64 = torch.float64


def _grads(cell, x, h0, fused):
    xs = [x.clone().requires_grad_(), h0.clone().requires_grad_()]
    y, (h,) = cell(xs[0], (xs[1],), fused=fused)
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64)).sum() for t in (y, h))
    return [y, h, *torch.autograd.grad(loss, xs + list(cell.parameters()),
                                       materialize_grads=True)]


@pytest.mark.parametrize("base,assignment,bias", [
    ("gru", "soft", True), ("gru", "hard", True), ("gru", "soft", False),
    ("gru_v3", "soft", True), ("mgu", "soft", True), ("br", "hard", True)])
def test_fused_equals_the_reference_loop(base, assignment, bias, monkeypatch):
    torch.manual_seed(0)
    cell = StateRegularized(3, 5, num_centroids=4, temperature=0.6, assignment=assignment,
                            base=base).double()
    if not bias:
        cell.base = type(cell.base)(3, 5, bias=False).double()
        cell._gru_steps.gru = cell.base
    monkeypatch.setenv("RNNZOO_NATIVE", "0")  # the Python loop (the C one: test_native_cells)
    calls = []
    real = manual._ManualLoop.apply
    monkeypatch.setattr(manual._ManualLoop, "apply", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, generator=g, dtype=F64)
    h0 = torch.randn(2, 5, generator=g, dtype=F64)
    ref, got = _grads(cell, x, h0, False), _grads(cell, x, h0, True)
    assert calls, "fused did not run the hand-written backward"
    for r, v in zip(ref, got):
        assert (r - v).abs().max().item() < 1e-12 * (1 + r.abs().max().item())


def test_fused_gradcheck_with_the_gru_base():
    torch.manual_seed(1)
    cell = StateRegularized(2, 3, num_centroids=3, temperature=0.8).double()
    S = cell.centroids.detach().clone().requires_grad_()
    x = torch.randn(2, 4, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, requires_grad=True)

    def f(x, h0, S):
        y, (h,) = torch.func.functional_call(cell, {"centroids": S}, (x, (h0,), True))
        return y, h

    assert torch.autograd.gradcheck(f, (x, h0, S), eps=1e-6, atol=1e-7)


def test_a_base_without_a_manual_step_runs_the_reference_loop(monkeypatch):
    cell = StateRegularized(3, 4, num_centroids=3, base="minimal_rnn").double()
    monkeypatch.setattr(manual._ManualLoop, "apply", lambda *a: pytest.fail("manual ran"))
    x = torch.randn(2, 5, 3, dtype=F64)
    h0 = torch.zeros(2, 4, dtype=F64)
    assert torch.equal(cell(x, (h0,), fused=True)[0], cell(x, (h0,))[0])
