"""Muon's Newton-Schulz iteration on the Gram matrix in C (newton_schulz.c), the form of
ops.atlas.newton_schulz when the long side is >= 2x the short: for X (n, s, l), s <= l,

    G = X X^T,  A_0 = G / nu^2 (nu = sqrt(tr G) + eps; eps where tr G <= 0),
    P_i = a I + b A_i + c A_i^2,  A_{i+1} = P_i A_i P_i,  Y = (P_{steps-1} ... P_0 / nu) X

one matrix at a time in cache (the Gram matrix, the iterates and both s x s x l products),
instead of ~20 small batched products a call and their temporaries. The backward keeps only
X: it recomputes G and the iterates and runs the chain rule back (as autograd does on the
PyTorch form, the iterates' transposes taken as the symmetric iterates themselves); it is not
differentiable again. X: float32 or
float64 on the CPU (`ops.backend.use_native`); threads split the n matrices.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("newton_schulz")


def _call(lib, name, X, *tensors, steps, coeffs, eps):
    P, L, i32, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
    n, s, long_ = X.shape
    fn = native.kernel(lib, name, X.dtype, [P] * (1 + len(tensors)) + [L, L, i32] + [D] * 4
                       + [L, L])
    ptrs = [native.ptr(t) for t in (X, *tensors)]
    native.run(fn, [(*ptrs, s, long_, steps, *coeffs, eps, *p) for p in native.rows(n)])


def fwd(lib, X, steps, coeffs, eps):
    """Y of X (n, s, l) contiguous, no autograd."""
    Y = torch.empty_like(X)
    _call(lib, "ns_fwd", X, Y, steps=steps, coeffs=coeffs, eps=eps)
    return Y


def bwd(lib, X, dY, steps, coeffs, eps, dX=None):
    """dX of fwd from dY, X and dY (n, s, l) contiguous, no autograd (dX, when given, is
    written)."""
    dX = torch.empty_like(X) if dX is None else dX
    _call(lib, "ns_bwd", X, dY, dX, steps=steps, coeffs=coeffs, eps=eps)
    return dX


def _torch_newton_schulz(X, steps, coeffs, eps):
    """Y of X (n, s, l) in PyTorch (ops.atlas.newton_schulz's Gram form): the form
    _NewtonSchulz's `twice` differentiates."""
    a, b, c = coeffs
    s = X.shape[1]
    A = X @ X.transpose(-1, -2)
    tr = A.diagonal(0, -2, -1).sum(-1)[:, None, None]
    pos = tr > 0                                        # sqrt's gradient at 0 stays finite
    norm = torch.where(pos, torch.where(pos, tr, 1).sqrt(), 0) + eps
    A = A / (norm * norm)
    aI = a * torch.eye(s, dtype=A.dtype, device=A.device)
    Q = None
    for i in range(steps):
        P = torch.baddbmm(b * A + aI, A, A, alpha=c)
        Q = P if Q is None else P @ Q
        if i + 1 < steps:
            A = P @ A @ P
    return (Q / norm) @ X


class _NewtonSchulz(first_order.Function):
    @staticmethod
    def forward(ctx, lib, X, steps, coeffs, eps):
        X0, X = X, X.contiguous()  # X0 for `twice` (a copy has no autograd history)
        Y = fwd(lib, X, steps, coeffs, eps)
        ctx.save_for_backward(X, X0)
        ctx.lib, ctx.args = lib, dict(steps=steps, coeffs=coeffs, eps=eps)
        return Y

    @staticmethod
    def twice(ctx, dY):
        a = ctx.args
        return (None, *first_order.replay(_torch_newton_schulz, (ctx.saved_tensors[1], a["steps"],
                                                                 a["coeffs"], a["eps"]),
                                          (dY,), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dY):
        X = ctx.saved_tensors[0]
        return None, bwd(ctx.lib, X, dY.contiguous(), **ctx.args), None, None, None


def newton_schulz(lib, X, steps, coeffs, eps):
    """Y (n, s, l) from X (n, s, l), s <= l; `lib` = load()."""
    return _NewtonSchulz.apply(lib, X, steps, tuple(float(c) for c in coeffs), float(eps))
