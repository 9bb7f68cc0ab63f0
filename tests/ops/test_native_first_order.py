"""The compiled kernels' backward passes are first order: under create_graph=True their
autograd nodes (ops.first_order.Function) raise instead of handing back gradients the graph
would hold as constants (a silently wrong second derivative)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import rnnzoo.ops.native as native
from rnnzoo import create
from rnnzoo.ops import backend, first_order
from rnnzoo.registry import LAYERS

# modules whose nodes switch to differentiable ops under create_graph (tested there)
TWICE = {"attention", "conv", "linear", "memory_gelu", "token_mix"}


def _second(layer, x, mode):
    y = layer(x, mode=mode)[0]
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), x)
    return h


@pytest.mark.parametrize("name", ["mamba2", "deltaproduct", "ttt_linear"])
def test_create_graph_through_a_kernel_raises(name):
    torch.manual_seed(0)
    info = LAYERS[name]
    layer = create(name, **info.tiny).double()
    x = torch.randn(2, 12, info.tiny["d_model"], dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first order only"):
        _second(layer, x, layer.auto_mode(x))
    # ttt_linear's PyTorch path is differentiable twice: its second derivative along v
    # equals the first derivative's central difference
    if name == "ttt_linear":
        v = torch.randn_like(x)
        with backend.force("torch"):
            h = _second(layer, x, layer.auto_mode(x))

            def f(z):
                z = z.detach().requires_grad_()
                y = layer(z, mode=layer.auto_mode(z))[0]
                (g,) = torch.autograd.grad(y.square().sum(), z)
                return g.square().sum()

            fd = (f(x + 1e-5 * v) - f(x - 1e-5 * v)) / 2e-5
        torch.testing.assert_close((h * v).sum(), fd, rtol=1e-6, atol=1e-8)


def test_every_kernel_node_is_first_order():
    """A new C kernel's autograd node must be an ops.first_order.Function (or live in a module
    that handles create_graph itself)."""
    plain = []
    for info in pkgutil.iter_modules(native.__path__):
        if info.name in TWICE:
            continue
        mod = importlib.import_module(f"rnnzoo.ops.native.{info.name}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if (cls.__module__ == mod.__name__ and issubclass(cls, torch.autograd.Function)
                    and not issubclass(cls, first_order.Function)):
                plain.append(f"{info.name}.{cls.__name__}")
    assert not plain, f"autograd nodes of C kernels without the first-order guard: {plain}"
