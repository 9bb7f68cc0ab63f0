"""ops.first_order: a Function's backward raises under create_graph unless it defines
`twice`, and `replay` gives a backward that differentiates again."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.ops import first_order


def _cube(x, w):
    return (x * w).pow(3), x.sin()


def _backward(ctx, ga, gb):  # first order only: written in detached arithmetic
    x, w = (t.detach() for t in ctx.saved_tensors)
    a = 3 * (x * w).square() * ga
    return a * w + x.cos() * gb, (a * x).sum(0), None


class _Raw(first_order.Function):
    @staticmethod
    def forward(ctx, x, w, k):
        ctx.save_for_backward(x, w)
        return _cube(x, w)

    backward = staticmethod(_backward)


class _Twice(_Raw):
    backward = staticmethod(_backward)  # the plain one: each class's guard wraps it once

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


# -- the ops' nodes that differentiate twice (tests/ops/test_native_first_order.py's TWICE) ---
def _gg(fn, args):
    return torch.autograd.gradgradcheck(fn, args, fast_mode=True)


def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["real", "complex", "no h0", "broadcast a", "T=1"])
def test_linear_scan_twice(kind, reverse):
    """_LinearScan's `twice` (its backward out of place, the reverse scan the node again):
    gradgradcheck, real and complex, with and without h0, a broadcast over channels."""
    from rnnzoo.ops.scan import linear_scan
    torch.manual_seed(0)
    T = 1 if kind == "T=1" else 6
    dt = torch.complex128 if kind == "complex" else torch.float64
    a = (0.9 * torch.rand(1, T, 1 if kind == "broadcast a" else 2, dtype=torch.float64))
    a = a.to(dt).requires_grad_()
    b = torch.randn(1, T, 2, dtype=dt, requires_grad=True)
    h0 = torch.randn(1, 2, dtype=dt, requires_grad=True)
    args = (a, b) if kind == "no h0" else (a, b, h0)
    assert _gg(lambda *z: linear_scan(*z, reverse=reverse)[0], args)


def test_feature_map_nodes_twice():
    """feature_maps' light nodes: _Normalised, _Starts and _Read (`twice`), _CausalKernel and
    _Transposed (backward in differentiable ops), and finite's _Zeroed (gradient straight
    through)."""
    from rnnzoo.ops import feature_maps as fm
    from rnnzoo.ops.finite import finite
    from rnnzoo.ops.native import attention as native_attention
    torch.manual_seed(0)
    o = torch.cat([torch.randn(2, 2, 5, 3, dtype=torch.float64),
                   torch.rand(2, 2, 5, 1, dtype=torch.float64) + 1], -1).requires_grad_()
    assert _gg(lambda o: fm._Normalised.apply(o, 1e-3), (o,))
    first, U = _f64(2, 2, 4, 3), _f64(2, 2, 3, 4, 3)
    assert _gg(lambda f, u: fm._Starts.apply(f, u), (first, U))
    lib = native_attention.load()
    if lib is not None:
        before, psi = _f64(2, 2, 3, 4, 6), _f64(2, 2, 3, 5, 6)
        assert _gg(lambda b, p: fm._Read.apply(lib, b, p), (before, psi))
    s = _f64(2, 4, 4)
    for square in (False, True):
        for upper in (False, True):
            assert _gg(lambda s: fm._CausalKernel.apply(s, square, upper), (s,))
    x = _f64(2, 3, 4)
    assert _gg(lambda x: fm._Transposed.apply(x).sin(), (x,))
    assert _gg(lambda x: finite(x)[0].sin(), (x,))


def test_log_linear_intra_twice():
    """log_linear's _Intra (`twice`: replay of its plain form)."""
    from rnnzoo.ops.log_linear import _Intra
    torch.manual_seed(0)
    B, H, N, C, K, L = 1, 2, 2, 4, 3, 3
    q, k, v = _f64(B, H, N, C, K), _f64(B, H, N, C, K), _f64(B, H, N, C, 2)
    G = (-torch.rand(B, H, N, C, dtype=torch.float64)).cumsum(-1).requires_grad_()
    lam = _f64(B, H, N, C, L)
    lev = torch.randint(0, L, (C, C))
    assert _gg(lambda *z: _Intra.apply(*z, lev), (q, k, v, G, lam))


def test_native_plain_nodes_twice():
    """attention's _Bmm and conv's _ScaledValues: C forward and first-order backward, torch's
    differentiable ops under create_graph (gradgradcheck, float64)."""
    from rnnzoo.ops.native import attention, conv
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()

    la, lc = attention.load(), conv.load()
    assert torch.autograd.gradgradcheck(lambda a, b: attention.bmm(la, a, b), (r(3, 4, 5), r(3, 5, 2)))
    assert torch.autograd.gradgradcheck(lambda x, u: conv.scaled_values(lc, x, u), (r(2, 3, 4), r(2, 3)))


# -- torch.func (docs/design.md, torch.func) ---------------------------------------------------
class _Hidden(first_order.Function):
    """A forward that hides its ops from autograd (an inner graph on detached inputs)."""

    @staticmethod
    def forward(ctx, x):
        with torch.no_grad():
            return x * 2

    @staticmethod
    def backward(ctx, g):
        return 2 * g

    twice = backward


class _Marked(first_order.Function):
    """Two outputs, the second marked non-differentiable; `plain` on the subclass only."""

    @staticmethod
    def forward(ctx, x):
        idx = x.argmax(-1, keepdim=True).to(x.dtype)
        ctx.mark_non_differentiable(idx)
        return x.sin(), idx

    @staticmethod
    def backward(ctx, g, _):
        raise AssertionError("not under torch.func")

    twice = backward


class _WithPlain(_Marked):
    plain = staticmethod(lambda x: (x.sin() + 0 * x, x.argmax(-1, keepdim=True).to(x.dtype)))


def test_func_transforms_run_the_forward_or_plain():
    """Under torch.func a node runs its forward's ops (or its `plain`): grad, jvp and vmap go
    through; an output marked non-differentiable comes back detached; a forward that hides
    its ops raises rather than giving a zero gradient; outside the transforms the node runs."""
    x = torch.randn(3, 4, dtype=torch.float64)
    for node in (_Marked, _WithPlain):
        def f(z, node=node):
            y, idx = node.apply(z)
            return (y * (1 + idx)).sum()
        g = torch.func.grad(f)(x)
        idx = x.argmax(-1, keepdim=True).to(x.dtype)
        torch.testing.assert_close(g, x.cos() * (1 + idx))  # no term from idx's dependence
        _, t = torch.func.jvp(lambda z, node=node: node.apply(z)[0], (x,), (torch.ones_like(x),))
        torch.testing.assert_close(t, x.cos())
        torch.testing.assert_close(torch.func.vmap(torch.func.grad(f))(x), x.cos() * (1 + idx))
    with pytest.raises(RuntimeError, match="_Hidden under torch.func: its forward hides"):
        torch.func.grad(lambda z: _Hidden.apply(z).sum())(x)
    z = x.clone().requires_grad_()
    with pytest.raises(AssertionError, match="not under torch.func"):
        _Marked.apply(z)[0].sum().backward()
