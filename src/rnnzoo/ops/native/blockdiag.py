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

from rnnzoo.ops import native


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


class _NativeBlockDiag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, weight):
        x2, w = _rows(x), weight.contiguous()
        rows, dim = x2.shape
        bs = w.shape[-1]
        y = x2.new_empty(rows, dim)
        fwd, _ = _kernels(lib, x.dtype)
        native.run(fwd, [(native.ptr(x2), native.ptr(w), native.ptr(y), x2.stride(0), dim, bs, *p)
                         for p in native.rows(rows)])
        ctx.save_for_backward(x2, w)
        ctx.lib, ctx.shape = lib, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, w = ctx.saved_tensors
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
