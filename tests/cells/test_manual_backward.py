"""The hand-written backward passes of cells/manual.py, in float64: every cell whose `fused`
mode is `manual_loop` gives the reference loop's outputs, final state and gradients (of
the input, the initial state and every parameter, under random weights on every output),
and (marked slow) passes a finite-difference gradcheck of all of them, the parameters
included; the conformance suite gradchecks the input and state gradients of every fused mode."""

from __future__ import annotations

import pytest
import torch
from _cells import D, perturbed, second_derivative_matches
from torch.func import functional_call

from rnnzoo.cells import manual
from rnnzoo.registry import CELLS

B, T = 2, 5

# (cell, options): every cell with a hand-written backward, and the options that change it
CASES = [
    ("gru", {}), ("gru", {"bias": False}), ("gru_v3", {}), ("gru_v3", {"bias": False}), ("miru1", {}),
    ("lstm", {"peepholes": True}), ("peephole_lstm", {}), ("peephole_lstm", {"bias": False}),
    ("res_lstm", {}), ("wmclstm", {}), ("wmclstm", {"bias": False}),
    ("multiplicative_lstm", {}), ("multiplicative_lstm", {"bias": False}), ("mclstm", {}),
    ("ln_lstm", {}), ("ln_gru", {}), ("sgu", {}), ("dsgu", {}), ("dsgu", {"bias": False}),
    ("lem", {}), ("lem", {"dt": 0.5}), ("nas", {}), ("nas", {"bias": False}), ("taugru", {}), ("taugru", {"delay": 3}),
    ("intersection_rnn", {}), ("slstm", {"num_heads": 2}), ("rhn", {"depth": 2}),
    ("rhn", {"depth": 2, "coupled": False}), ("ltc", {"ode_unfolds": 2}), ("ltc", {"dt": 0.5}),
    ("cfc", {}), ("cfc", {"backbone_units": 0}), ("cfc", {"dt": 0.3}),
    ("paralstm", {}), ("paragru", {}), ("cifg_lstm", {}), ("original_lstm", {}), ("janet", {}),
    ("mut1", {}), ("mut2", {}), ("mut3", {}), ("mut3", {"bias": False}), ("scrn", {}), ("scrn", {"context_size": 3, "alpha": 0.5, "bias": False}),
    ("cfn", {}), ("cfn", {"bias": False}), ("ran", {}), ("ran", {"nonlinearity": "identity"}),
    ("ugrnn", {}), ("ligru", {}), ("ligru", {"nonlinearity": "tanh"}),
    ("gated_antisymmetric_rnn", {}), ("nbr", {}), ("br", {}), ("br", {"bias": False}),
    ("fastgrnn", {}), ("fastgrnn", {"gate_nonlinearity": "tanh", "update_nonlinearity": "relu"}),
    ("mgu", {}), ("star", {}), ("sgrn", {}), ("lightru", {}), ("atr", {}),
    ("atr", {"bias": False}), ("cornn", {}), ("cornn", {"implicit_damping": False}),
]


def _inputs(cell, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    s0 = tuple(torch.randn(B, n, generator=g, dtype=torch.float64) for n in cell.state_sizes)
    return x, s0


def test_every_manual_cell_is_covered():
    have = {n for n, info in CELLS.items() if hasattr(info.cls, "manual_step")}
    assert have == {n for n, _ in CASES}


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_manual_backward_equals_reference(name, options, monkeypatch):
    monkeypatch.setenv("RNNZOO_NATIVE", "0")  # the Python loop (the C loops: test_native_cells)
    cell = perturbed(name, **options)
    calls = []
    real = manual._ManualLoop.apply
    monkeypatch.setattr(manual._ManualLoop, "apply", lambda *a: calls.append(1) or real(*a))
    x, s0 = _inputs(cell)
    g = torch.Generator().manual_seed(7)

    def grads(fused):
        xs = [x.clone().requires_grad_()] + [s.clone().requires_grad_() for s in s0]
        y, s = cell(xs[0], tuple(xs[1:]), fused=fused)
        g.manual_seed(7)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
                   for t in (y, *s))
        params = list(cell.parameters())
        return [y, *s] + list(torch.autograd.grad(loss, xs + params, allow_unused=True,
                                                     materialize_grads=True))

    ref, got = grads(False), grads(True)
    assert calls, "fused mode did not run the hand-written backward"
    for r, v in zip(ref, got):
        assert (r - v).abs().max().item() < 1e-10 * (1 + r.abs().max().item())


@pytest.mark.slow  # finite differences over every parameter: ~2-10 s a case
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_manual_backward_gradcheck(name, options):
    cell = perturbed(name, **options)
    x, s0 = _inputs(cell)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]

    def f(x, *rest):
        state, ps = rest[:len(s0)], rest[len(s0):]
        y, s = functional_call(cell, dict(zip(names, ps)), (x, tuple(state), True))
        return (y, *s)

    inputs = (x[:, :3].clone().requires_grad_(), *(s.clone().requires_grad_() for s in s0),
              *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


TWICE = [("gru", {}), ("lstm", {"peepholes": True}), ("res_lstm", {}), ("ln_gru", {}),
         ("sgu", {}), ("dsgu", {}), ("slstm", {"num_heads": 2}), ("rhn", {"depth": 2}),
         ("ltc", {"ode_unfolds": 2}), ("ln_lstm", {}), ("cornn", {})]


@pytest.mark.parametrize("name,options", TWICE, ids=[f"{n}-{o}" for n, o in TWICE])
def test_manual_loop_second_derivative(name, options, monkeypatch):
    """Under create_graph `_ManualLoop.twice` replays `manual_step` through autograd
    (`manual.manual_plain`): the second derivative in x, the state and the parameters."""
    monkeypatch.setenv("RNNZOO_NATIVE", "0")  # the Python loop
    cell = perturbed(name, **options)
    x, s0 = _inputs(cell)
    names = [n for n, _ in cell.named_parameters()]

    def f(x, *rest):
        state, ps = rest[:len(s0)], rest[len(s0):]
        y, s = functional_call(cell, dict(zip(names, ps)), (x, tuple(state), True))
        return (y, *s)

    inputs = [x[:, :3].clone().requires_grad_(), *(s.clone().requires_grad_() for s in s0),
              *(p.detach().clone().requires_grad_() for p in cell.parameters())]
    second_derivative_matches(f, inputs)
