"""The tanh GELU of the memory layers' MLP memories in C (memory_gelu.c), elementwise:

    gelu(z) = z (1 + tanh(s (z + c z^3))) / 2,      gelu_back(g, z) = g gelu'(z)

both differentiable (gelu's backward is gelu_back; gelu_back's is g'' from the kernel, and
under create_graph aten's gelu_backward differentiated by autograd: the chunk forms hold
gelu' in their forward, so their backward needs g'', and a second derivative more).
Equal to F.gelu(z, approximate="tanh") and aten.gelu_backward to rounding (tanh from
exp.h's exponential). z, g: one shape, float32 or float64 on the CPU (`ops.backend.use_native`
decides); threads split the elements.
"""

from __future__ import annotations

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("memory_gelu")


class _Gelu(first_order.Transformable):
    @staticmethod
    def forward(ctx, lib, z):
        z0, z = z, z.contiguous()
        y = torch.empty_like(z)
        native.elementwise(lib, "gelu_fwd", z, y)
        ctx.save_for_backward(z, z0)
        ctx.lib = lib
        return y

    @staticmethod
    def backward(ctx, dy):
        # under create_graph the original z (a .contiguous() copy has no autograd history)
        z = ctx.saved_tensors[1 if torch.is_grad_enabled() else 0]
        return None, _GeluBack.apply(ctx.lib, dy, z)


def _torch_gelu_back(g, z):
    """gelu_back in PyTorch (aten's gelu_backward, differentiable again): the form
    _GeluBack's `twice` differentiates."""
    return torch.ops.aten.gelu_backward(g, z, approximate="tanh")


class _GeluBack(first_order.Function):
    @staticmethod
    def forward(ctx, lib, g, z):
        orig = (g, z)  # for `twice`
        g, z = g.contiguous(), z.contiguous()
        out = torch.empty_like(z)
        native.elementwise(lib, "gelu_bwd", g, z, out)
        ctx.save_for_backward(g, z, *orig)
        ctx.lib = lib
        return out

    @staticmethod
    def twice(ctx, d):
        return (None, *first_order.replay(_torch_gelu_back, ctx.saved_tensors[2:], (d,),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, d):
        g, z = ctx.saved_tensors[:2]
        dg, dz = torch.empty_like(z), torch.empty_like(z)
        native.elementwise(ctx.lib, "gelu_bwd2", d.contiguous(), g, z, dg, dz)
        return None, dg, dz


def gelu(lib, z):
    """gelu_tanh(z); `lib` = load()."""
    return _Gelu.apply(lib, z)


def gelu_back(lib, g, z):
    """g gelu_tanh'(z), g and z of one shape."""
    return _GeluBack.apply(lib, g, z)
