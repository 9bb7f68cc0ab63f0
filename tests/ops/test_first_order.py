"""ops.first_order: a Function's backward raises under create_graph unless it defines
`twice`, and `replay` gives a backward that differentiates again."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.ops import first_order


def _cube(x, w):
    return (x * w).pow(3), x.sin()


class _Raw(first_order.Function):
    @staticmethod
    def forward(ctx, x, w, k):
        ctx.save_for_backward(x, w)
        return _cube(x, w)

    @staticmethod
    def backward(ctx, ga, gb):  # first order only: written in detached arithmetic
        x, w = (t.detach() for t in ctx.saved_tensors)
        a = 3 * (x * w).square() * ga
        return a * w + x.cos() * gb, (a * x).sum(0), None


class _Twice(_Raw):
    backward = _Raw.backward

    @staticmethod
    def twice(ctx, ga, gb):
        x, w = ctx.saved_tensors
        return first_order.replay(lambda x, w, k: _cube(x, w), (x, w, 3), (ga, gb),
                                  ctx.needs_input_grad)


def _loss(op, x, w, create_graph):
    a, b = op.apply(x, w, 3)
    gx, gw = torch.autograd.grad((a.sum() + b.square().sum()), (x, w),
                                 create_graph=create_graph)
    return gx.square().sum() + gw.square().sum()


def test_first_order_backward_is_unchanged_and_raises_under_create_graph():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = _loss(_Twice, x, w, False)
    torch.testing.assert_close(_loss(_Raw, x, w, False), ref, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="_Raw's backward is first order only"):
        _loss(_Raw, x, w, True)


def test_twice_gives_the_second_derivative():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    hx, hw = torch.autograd.grad(_loss(_Twice, x, w, True), (x, w))
    vx, vw = torch.randn_like(x), torch.randn_like(w)

    def f(e):
        return _loss(_Twice, (x + e * vx).detach().requires_grad_(),
                     (w + e * vw).detach().requires_grad_(), False)

    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    torch.testing.assert_close((hx * vx).sum() + (hw * vw).sum(), fd, rtol=1e-7, atol=1e-9)
    # and the plain autograd of the same function agrees
    assert torch.autograd.gradgradcheck(lambda x, w: _Twice.apply(x, w, 3), (x, w))
