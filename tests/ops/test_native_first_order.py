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


# Every other custom autograd node of the package is an ops.first_order.Function (its
# backward raises under create_graph unless it defines `twice`), or is named here: a plain
# torch.autograd.Function whose backward is written in differentiable ops over its saved
# inputs, so that it differentiates twice as it is, with the test that checks it so.
TWICE_NODES = {
    "rnnzoo.ops.finite._Zeroed": "tests/ops/test_first_order.py::test_feature_map_nodes_twice",
    "rnnzoo.ops.feature_maps._CausalKernel":
        "tests/ops/test_first_order.py::test_feature_map_nodes_twice",
    "rnnzoo.ops.feature_maps._Transposed":
        "tests/ops/test_first_order.py::test_feature_map_nodes_twice",
}
# The layers' and cells' own nodes, s20-hoglayers' part of the higher-order work: each becomes
# a first_order.Function or joins TWICE_NODES with its test when that work is merged, and this
# set is then empty (its entries are checked to exist, so it cannot go stale).
PENDING = {
    "rnnzoo.cells.base._DeferredWeightGrad", "rnnzoo.cells.manual._ManualLoop",
    "rnnzoo.cells.quasi._SRUCellState", "rnnzoo.cells.quasi._TapSum", "rnnzoo.cells.steps._Fresh",
    "rnnzoo.layers._delta_block._L2Norm", "rnnzoo.layers.hgrn2._Gates",
    "rnnzoo.layers.kda._LogDecay", "rnnzoo.layers.mamba._DeltaProj",
    "rnnzoo.layers.mamba._SelectiveScan", "rnnzoo.layers.mamba2._GatedRMSNorm",
    "rnnzoo.layers.mamba3._Rotation", "rnnzoo.layers.pgn._GatedUnit", "rnnzoo.layers.pgn._HieFFT",
    "rnnzoo.layers.rwkv6._MixProject", "rnnzoo.layers.rwkv6._NegExp",
    "rnnzoo.layers.s4d._CausalFFTConv", "rnnzoo.layers.s4d._Vandermonde",
    "rnnzoo.layers.stickbreaking_attention._Split",
}


def _package_nodes():
    """{'module.Class': class} for every torch.autograd.Function subclass defined in rnnzoo
    (every module imported; the Triton kernels' where triton imports)."""
    import rnnzoo
    for info in pkgutil.walk_packages(rnnzoo.__path__, "rnnzoo."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:
            if not info.name.startswith("rnnzoo.ops.triton"):
                raise
    found, todo = {}, [torch.autograd.Function]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("rnnzoo.") and sub is not first_order.Function:
                found[f"{sub.__module__}.{sub.__qualname__}"] = sub
    return found


def test_every_autograd_node_is_first_order_or_named():
    """Every torch.autograd.Function in the package is a first_order.Function, or a node named
    in TWICE_NODES (with an existing test) or in a TWICE module of the C kernels (tested with
    those kernels), or PENDING."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    nodes = _package_nodes()
    plain = {n for n, c in nodes.items() if not issubclass(c, first_order.Function)}
    native_twice = {n for n in plain
                    if n.rsplit(".", 2)[0] == "rnnzoo.ops.native" and n.split(".")[3] in TWICE}
    assert plain - native_twice - set(TWICE_NODES) - PENDING == set(), \
        "autograd nodes neither first_order.Function nor named as differentiable twice"
    assert set(TWICE_NODES) | PENDING <= plain, "a named node is gone or now first_order"
    for test in TWICE_NODES.values():
        path, fn = test.split("::")
        assert f"def {fn}(" in (root / path).read_text(), test
