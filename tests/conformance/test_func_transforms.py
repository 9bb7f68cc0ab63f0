"""torch.func through every registered layer and mode (docs/design.md, torch.func): under the
transforms each custom node runs its plain PyTorch form, so that

1. torch.func.grad of a loss through functional_call equals torch.autograd.grad on the fast
   path (the C kernels on, the custom nodes' own backwards), in every parameter;
2. jvp in x equals the directional derivative from autograd on the fast path: the
   double-vjp trick (J v = d/du <J^T u, v>, J^T u by create_graph), and <r, J v> = <J^T r, v>
   (first order only) where the double vjp is not finite (DOUBLE_VJP_NAN);
3. vmap(grad) per-sample gradients equal a loop of torch.autograd.grad over the samples.

One call each per (layer, mode) on the tiny float64 instance, B = 2, T = 6. No (layer, mode)
is excepted.
"""

from __future__ import annotations

import pytest
import torch
from test_conformance import MODE_CASES, inputs, make
from torch.func import functional_call, grad, jvp, vmap

TOL = dict(rtol=1e-8, atol=1e-10)
# the double vjp of these is NaN, on the plain PyTorch path too (not the transforms): their
# second derivative takes 0 * inf where a running log-sum-exp starts from -inf
DOUBLE_VJP_NAN = {"lightnet"}


def _loss(layer, params, x, mode, r):
    return (functional_call(layer, params, (x,), {"mode": mode})[0] * r).sum()


@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_func_transforms(name, mode):
    layer = make(name)
    x = inputs(layer, T=6)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    with torch.no_grad():
        y = layer(x, mode=mode)[0]
    r = torch.randn(y.shape, generator=g, dtype=y.dtype)
    named = {k: p for k, p in layer.named_parameters() if p.requires_grad}
    params = {k: p.detach() for k, p in named.items()}

    # 1. torch.func.grad in the parameters (functional_call) == autograd on the fast path
    got = grad(lambda p: _loss(layer, p, x, mode, r))(params)
    want = torch.autograd.grad((layer(x, mode=mode)[0] * r).sum(), list(named.values()),
                               allow_unused=True)
    for (k, a), b in zip(got.items(), want):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, **TOL, msg=k)

    # 2. jvp in x == J v by autograd: J v = d/du <J^T u, v>
    _, tangent = jvp(lambda z: layer(z, mode=mode)[0], (x,), (v,))
    xg = x.detach().requires_grad_()
    if name in DOUBLE_VJP_NAN:
        (jtr,) = torch.autograd.grad((layer(xg, mode=mode)[0] * r).sum(), xg)
        torch.testing.assert_close((tangent * r).sum(), (jtr * v).sum(), **TOL)
    else:
        u = torch.zeros_like(y, requires_grad=True)
        (jtu,) = torch.autograd.grad(layer(xg, mode=mode)[0], xg, u, create_graph=True)
        (jv,) = torch.autograd.grad(jtu, u, v)
        torch.testing.assert_close(tangent, jv, **TOL)

    # 3. vmap(grad): per-sample gradients == a loop over the samples
    def one(p, xi, ri):
        return _loss(layer, p, xi[None], mode, ri[None])

    per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, r)
    for i in range(x.shape[0]):
        loss = (layer(x[i:i + 1], mode=mode)[0] * r[i:i + 1]).sum()
        want = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        for (k, a), b in zip(per.items(), want):
            torch.testing.assert_close(a[i], torch.zeros_like(a[i]) if b is None else b, **TOL,
                                       msg=f"{k}, sample {i}")
