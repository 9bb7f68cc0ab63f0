"""Second derivatives through a custom autograd node (its `twice`, ops.first_order) against a
central difference of its first-order backward, in float64."""

from __future__ import annotations

import torch


def _grads(fn, args, us, create_graph):
    """The gradients of sum_i <out_i, u_i> in the tensor args that require grad."""
    out = fn(*args)
    out = out if isinstance(out, tuple) else (out,)
    wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    total = sum((o * u).sum() for o, u in zip(out, us) if o is not None)
    return torch.autograd.grad(total, wrt, create_graph=create_graph)


def check_twice(fn, args, eps=1e-6, rtol=1e-6, atol=1e-9, seed=0):
    """fn(*args) -> a tensor or a tuple of them; args: float64 tensors (those requiring grad
    are differentiated) and other arguments. Checks (1) the gradients under create_graph (the
    node's `twice`) equal its first-order backward's to rounding, (2) the derivative of
    S = sum_i <g_i, w_i> + |g|^2 (g: the first gradients) along a random direction equals the
    central difference of S over the first-order backward."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*args)
    out = out if isinstance(out, tuple) else (out,)
    us = [None if o is None else torch.randn(o.shape, generator=gen, dtype=o.dtype)
          for o in out]
    ins = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    g0 = _grads(fn, args, us, False)
    g1 = _grads(fn, args, us, True)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b.detach(), a, rtol=1e-12, atol=1e-12)
    ws = [torch.randn(g.shape, generator=gen, dtype=g.dtype) for g in g0]
    vs = [torch.randn(args[i].shape, generator=gen, dtype=args[i].dtype) for i in ins]

    def S(gs):
        return sum((g * w).sum() + g.square().sum() for g, w in zip(gs, ws))

    s = S(g1)  # a linear node's gradients hold no x: then a constant (hv 0)
    hs = torch.autograd.grad(s, [args[i] for i in ins], allow_unused=True) \
        if s.requires_grad else ()
    hv = sum(((h * v).sum() for h, v in zip(hs, vs) if h is not None), s.new_zeros(()))

    def at(e):
        moved = list(args)
        for i, v in zip(ins, vs):
            moved[i] = (args[i].detach() + e * v).requires_grad_()
        return S(_grads(fn, moved, us, False))

    fd = (at(eps) - at(-eps)) / (2 * eps)
    torch.testing.assert_close(hv, fd, rtol=rtol, atol=atol)


def check_layer_twice(layer, x, mode, **tol):
    """`check_twice` of layer(x, mode=mode)'s output in x and every parameter (float64)."""
    names, params = zip(*[(n, p) for n, p in layer.named_parameters() if p.requires_grad])

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,),
                                          {"mode": mode})[0]

    check_twice(fn, (x, *(p.detach().requires_grad_() for p in params)), **tol)
