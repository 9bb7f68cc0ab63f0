"""The check the tests of ops.native's `twice` nodes share: a node's second derivative under
create_graph=True against a central difference of its first-order gradient, and against the
same second derivative through the op's plain PyTorch form."""

from __future__ import annotations

import torch


def second_order(f, inputs, ref=None, eps=1e-6, tol=1e-7, linear=()):
    """f(*inputs) -> a tensor or a tuple of tensors (through a C kernel's node); inputs: float64
    leaves. L = sum over inputs of |d <c, f> / d input|^2, c random output weights: the
    gradient of L (computed through the node's `twice`) along a random direction must equal
    L's central difference (first order through the node, no create_graph), and equal the
    gradient of L through ref (the op's plain PyTorch form, when given), each input's part
    to 1e-10. The first-order gradients with and without create_graph agree to 1e-12. Every
    input's part of L's gradient is nonzero but those whose index is in `linear` (f is
    linear in them and the others do not depend on them: theirs is 0). Returns the
    gradients of L. The first input is first mixed with the others of its shape
    (x0 + 0.3 tanh(xi)), as in the layers where one argument of a node was computed from
    another (longhorn's gate: y from the values u): the node's second derivative must
    still take each argument's partial derivative alone."""
    gen = torch.Generator().manual_seed(5)
    f, ref = _mixed(f), None if ref is None else _mixed(ref)
    outs = f(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    c = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in outs]

    def loss(fn, xs, cg):
        out = fn(*xs)
        out = out if isinstance(out, tuple) else (out,)
        gs = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, c)), xs,
                                 create_graph=cg)
        return sum(g.square().sum() for g in gs), gs

    L, g2 = loss(f, inputs, True)
    h = _grad(L, inputs)
    _, g1 = loss(f, inputs, False)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)
    v = [torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in inputs]

    def at(e):
        xs = [(x + e * d).detach().requires_grad_() for x, d in zip(inputs, v)]
        return loss(f, xs, False)[0]

    fd = (at(eps) - at(-eps)) / (2 * eps)
    hv = sum((a * d).sum() for a, d in zip(h, v))
    torch.testing.assert_close(hv, fd, rtol=tol, atol=tol)
    assert all((a.abs().sum() > 0) != (i in linear) for i, a in enumerate(h))
    if ref is not None:
        want = _grad(loss(ref, inputs, True)[0], inputs)
        for a, b in zip(h, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return h


def _grad(L, inputs):
    return [torch.zeros_like(x) if a is None else a
            for x, a in zip(inputs, torch.autograd.grad(L, inputs, allow_unused=True))]


def _mixed(f):
    def call(x0, *rest):
        for x in rest:
            if x.shape == x0.shape:
                x0 = x0 + 0.3 * torch.tanh(x)
        return f(x0, *rest)
    return call
