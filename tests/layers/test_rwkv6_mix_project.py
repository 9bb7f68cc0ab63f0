"""RWKV-6's ddlerp mixes and projections as one autograd Function (`_MixProject`): its
hand-written gradients against torch's gradcheck and its values against the plain formulas,
in float64 (matmul path) and float32 (oneDNN's products on the CPU)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _twice import check_twice

from rnnzoo.layers.rwkv6 import _MixProject, _NegExp
from rnnzoo.ops import backend


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def inputs(N, d, r, dtype):
    return [rand(*s, seed=i, dtype=dtype).requires_grad_()
            for i, s in enumerate([(N, d), (N, d), (N, 5, r), (5, r, d), (5, d), (4, d, d)])]


def plain(x, dx, low, up, mu, W):
    mixes = [x + dx * (mu[i] + low[:, i] @ up[i]) for i in range(5)]
    return mixes[0], *[m @ w.T for m, w in zip(mixes[1:], W)]


def test_mix_project_gradcheck():
    assert torch.autograd.gradcheck(_MixProject.apply, inputs(4, 3, 2, torch.float64))


@pytest.mark.parametrize("forced", [False, True])  # oneDNN's products, or torch's
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_mix_project_values_and_grads(dtype, tol, forced):
    args = inputs(37, 24, 5, dtype)
    with backend.force("torch") if forced else contextlib.nullcontext():
        outs = _MixProject.apply(*args)
    ref = plain(*args)
    ws = [rand(*o.shape, seed=10 + i, dtype=dtype) for i, o in enumerate(ref)]
    with backend.force("torch") if forced else contextlib.nullcontext():
        grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), args,
                                    retain_graph=True)
    ref_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, ws)), args,
                                    retain_graph=True)
    for a, b in zip([*outs, *grads], [*ref, *ref_grads]):
        assert (a - b).abs().max() <= tol * b.abs().max()
    # outputs without a gradient (the gate in lion_inputs: None in the backward)
    g = torch.autograd.grad(outs[1].sum(), args[0], retain_graph=True)[0]
    assert torch.allclose(g, torch.autograd.grad(ref[1].sum(), args[0])[0], rtol=tol, atol=tol)


def test_neg_exp_values_and_gradients():
    """rwkv6's log-decay -exp(w) (_NegExp): values, float64 gradients and second derivatives."""
    w = rand(3, 5).requires_grad_()
    assert torch.equal(_NegExp.apply(w), -w.exp())
    assert torch.autograd.gradcheck(_NegExp.apply, [w])
    assert torch.autograd.gradgradcheck(_NegExp.apply, [w])



@pytest.mark.parametrize("forced", [False, True])
def test_mix_project_and_negexp_second_derivatives(forced):
    """create_graph runs `_MixProject.twice` (the plain mixes and products), on the C path
    and torch's; `_NegExp`'s backward (dy * y over its saved output) is differentiable."""
    with backend.force("torch") if forced else contextlib.nullcontext():
        check_twice(_MixProject.apply, inputs(4, 3, 2, torch.float64))
    check_twice(_NegExp.apply, (rand(3, 4).requires_grad_(),))
