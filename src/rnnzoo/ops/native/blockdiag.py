"""A block-diagonal linear map in C (blockdiag.c), forward and backward, bs multiply-adds per
output: xLSTM's headwise q, k, v projections (layers.mlstm.BlockDiagonalLinear).

x: (..., dim) whose last dim is contiguous (rows may be strided: a split of a wider tensor);
weight: (dim / bs, bs, bs), y[..., b bs + o] = sum_i weight[b, o, i] x[..., b bs + i]; one dtype
(float32 or float64) on the CPU (`ops.backend.use_native`). Differentiable in x and weight;
threads split the rows, each with its own slice of the weight gradient, summed after.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("blockdiag")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "blockdiag_fwd", dtype, [P] * 3 + [L] * 5),
            native.kernel(lib, "blockdiag_bwd", dtype, [P] * 5 + [L] * 5))


def _rows(x):
    """x as (rows, dim) with a row stride, copying only when no such view exists."""
    dim = x.shape[-1]
    x2 = x.reshape(-1, dim)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < dim):
        x2 = x2.contiguous()
    return x2


def _torch_blockdiag(x, weight):
    """y = x BD^T in PyTorch: the form the nodes' `twice` differentiate."""
    nb, bs = weight.shape[0], weight.shape[-1]
    return torch.einsum("...bi,boi->...bo", x.unflatten(-1, (nb, bs)), weight).flatten(-2)


def _torch_gated(x, W0, W1, G, through):
    """_NativeBlockDiagGated's outputs in PyTorch (total None: not differentiable)."""
    return (_torch_blockdiag(x, W0), None if W1 is None else _torch_blockdiag(x, W1),
            x @ G.t(), None, x if through else None)


class _NativeBlockDiag(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, weight):
        orig = (x, weight)  # for `twice` (the copies below have no autograd history)
        x2, w = _rows(x), weight.contiguous()
        rows, dim = x2.shape
        bs = w.shape[-1]
        y = x2.new_empty(rows, dim)
        fwd, _ = _kernels(lib, x.dtype)
        native.run(fwd, [(native.ptr(x2), native.ptr(w), native.ptr(y), x2.stride(0), dim, bs, *p)
                         for p in native.rows(rows)])
        ctx.save_for_backward(x2, w, *orig)
        ctx.lib, ctx.shape = lib, x.shape
        return y.view(x.shape)

    @staticmethod
    def twice(ctx, dy):
        return (None, *first_order.replay(_torch_blockdiag, ctx.saved_tensors[2:], (dy,),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dy):
        x2, w = ctx.saved_tensors[:2]
        rows, dim = x2.shape
        bs = w.shape[-1]
        dy = dy.contiguous().view(rows, dim)
        parts = native.rows(rows)
        dx, dw = torch.empty_like(dy), w.new_empty(len(parts), *w.shape)
        _, bwd = _kernels(ctx.lib, x2.dtype)
        native.run(bwd, [(native.ptr(x2), native.ptr(w), native.ptr(dy), native.ptr(dx), native.ptr(dw[i]), x2.stride(0), dim,
                          bs, a, b) for i, (a, b) in enumerate(parts)])
        return None, dx.view(ctx.shape), dw.sum(0)


def blockdiag(lib, x, weight):
    """y = x BD^T; `lib` = load()."""
    return _NativeBlockDiag.apply(lib, x, weight)


def _gated_kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "blockdiag_gated_fwd", dtype, [P] * 8 + [L] * 6),
            native.kernel(lib, "blockdiag_gated_bwd", dtype, [P] * 12 + [L] * 6))


class _NativeBlockDiagGated(first_order.Function):
    """(x, W0, W1 or None, G) -> (y0, y1 or None, g, total, x'), blockdiag.c's names; total
    (one entry per thread's rows, not differentiable) sums y0, y1 and g; x' is x (a view)
    when `through`, its gradient added to x's in the backward's pass, else None."""

    @staticmethod
    def forward(ctx, lib, x, W0, W1, G, through=False):
        orig = (x, W0, W1, G)  # for `twice`
        x2, W0, G = _rows(x), W0.contiguous(), G.contiguous()
        W1 = None if W1 is None else W1.contiguous()
        rows, dim = x2.shape
        bs, ng = W0.shape[-1], G.shape[0]
        y0, g = x2.new_empty(rows, dim), x2.new_empty(rows, ng)
        y1 = None if W1 is None else x2.new_empty(rows, dim)
        parts = native.rows(rows)
        total = x2.new_zeros(max(1, len(parts)))
        fwd, _ = _gated_kernels(lib, x.dtype)
        native.run(fwd, [(*(native.ptr(t) for t in (x2, W0, W1, G, y0, y1, g, total[i])),
                          x2.stride(0), dim, bs, ng, *p) for i, p in enumerate(parts)])
        ctx.save_for_backward(x2, W0, W1, G, *orig)
        ctx.lib, ctx.shape, ctx.through = lib, x.shape, through
        ctx.mark_non_differentiable(total)
        lead = x.shape[:-1]
        return (y0.view(x.shape), None if y1 is None else y1.view(x.shape), g.view(*lead, ng),
                total, x.view_as(x) if through else None)

    @staticmethod
    def twice(ctx, dy0, dy1, dg, _, dthrough):
        return (None, *first_order.replay(_torch_gated, (*ctx.saved_tensors[4:], ctx.through),
                                     (dy0, dy1, dg, None, dthrough), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dy0, dy1, dg, _, dthrough):
        x2, W0, W1, G = ctx.saved_tensors[:4]
        rows, dim = x2.shape
        bs, ng = W0.shape[-1], G.shape[0]
        dy0, dg = ((x2.new_zeros(rows, n) if d is None else d.contiguous().view(rows, n))
                   for d, n in ((dy0, dim), (dg, ng)))
        if W1 is not None:
            dy1 = x2.new_zeros(rows, dim) if dy1 is None else dy1.contiguous().view(rows, dim)
        parts = native.rows(rows)
        dx = torch.empty_like(dy0)
        dx0 = None if dthrough is None else dthrough.contiguous().view(rows, dim)
        dW0, dG = W0.new_empty(len(parts), *W0.shape), G.new_empty(len(parts), *G.shape)
        dW1 = None if W1 is None else W1.new_empty(len(parts), *W1.shape)
        _, bwd = _gated_kernels(ctx.lib, x2.dtype)
        native.run(bwd, [(*(native.ptr(t) for t in (x2, W0, W1, G, dy0, None if W1 is None else dy1,
                                                    dg, dx0, dx, dW0[i],
                                                    None if W1 is None else dW1[i],
                                                    dG[i])),
                          x2.stride(0), dim, bs, ng, a, b) for i, (a, b) in enumerate(parts)])
        return (None, dx.view(ctx.shape), dW0.sum(0), None if W1 is None else dW1.sum(0),
                dG.sum(0), None)


def blockdiag_gated(lib, x, W0, W1, G, total=False, through=False):
    """(x BD0^T, x BD1^T or None, x G^T) in one pass each way: x (..., dim), W0 / W1 (dim / bs,
    bs, bs) (W1 may be None), G (ng, dim); `lib` = load(). total=True appends the sum of the
    three outputs' entries (a 0-dim tensor, not differentiable: finite only when every entry
    is, the finiteness check of ops.finite.clean_inputs without another pass over them).
    through=True appends x itself (a view) for the caller's other uses of x: their gradient is
    added to x's inside the backward's pass (no (..., dim) addition by autograd after)."""
    *out, parts, xt = _NativeBlockDiagGated.apply(lib, x, W0, W1, G, through)
    out = (*out, parts.sum()) if total else tuple(out)
    return (*out, xt) if through else out
