"""The tanh GELU of the memory layers' MLP memories in C (memory_gelu.c), elementwise:

    gelu(z) = z (1 + tanh(s (z + c z^3))) / 2,      gelu_back(g, z) = g gelu'(z)

both differentiable (gelu's backward is gelu_back; gelu_back's is g'' from the kernel, once:
the chunk forms hold gelu' in their forward, so their backward needs g'', nothing beyond).
Equal to F.gelu(z, approximate="tanh") and aten.gelu_backward to rounding (tanh from
exp.h's exponential). z, g: one shape, float32 or float64 on the CPU (`ops.backend.use_native`
decides); threads split the elements.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnzoo.ops import native


def load():
    return native.load("memory_gelu")


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, z):
        z = z.contiguous()
        y = torch.empty_like(z)
        native.elementwise(lib, "gelu_fwd", z, y)
        ctx.save_for_backward(z)
        ctx.lib = lib
        return y

    @staticmethod
    def backward(ctx, dy):
        (z,) = ctx.saved_tensors
        return None, _GeluBack.apply(ctx.lib, dy, z)


class _GeluBack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, g, z):
        g, z = g.contiguous(), z.contiguous()
        out = torch.empty_like(z)
        native.elementwise(lib, "gelu_bwd", g, z, out)
        ctx.save_for_backward(g, z)
        ctx.lib = lib
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d):
        g, z = ctx.saved_tensors
        dg, dz = torch.empty_like(z), torch.empty_like(z)
        native.elementwise(ctx.lib, "gelu_bwd2", d.contiguous(), g, z, dg, dz)
        return None, dg, dz


def gelu(lib, z):
    """gelu_tanh(z); `lib` = load()."""
    return _Gelu.apply(lib, z)


def gelu_back(lib, g, z):
    """g gelu_tanh'(z), g and z of one shape."""
    return _GeluBack.apply(lib, g, z)
