"""Every custom autograd node of the package differentiates twice (docs/design.md,
higher-order gradients): a first_order.Function defines `twice` (its backward raises under
create_graph=True without one), or a plain torch.autograd.Function is named here with the
test that checks its double backward."""

from __future__ import annotations

import importlib
import pkgutil

import torch

from rnnzoo import create
from rnnzoo.ops import backend, first_order
from rnnzoo.registry import LAYERS


def _second(layer, x, mode):
    y = layer(x, mode=mode)[0]
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), x)
    return h


def test_ttt_linear_second_derivative_c_equals_torch():
    """ttt_linear's C kernels' nodes (their `twice` replays ops.memory's PyTorch forms): the
    second derivative equals the PyTorch path's and the first derivative's central
    difference along v."""
    torch.manual_seed(0)
    info = LAYERS["ttt_linear"]
    layer = create("ttt_linear", **info.tiny).double()
    x = torch.randn(2, 12, info.tiny["d_model"], dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(x)
    h = _second(layer, x, layer.auto_mode(x))
    with backend.force("torch"):
        torch.testing.assert_close(h, _second(layer, x, layer.auto_mode(x)), rtol=1e-9,
                                   atol=1e-10)

        def f(z):
            z = z.detach().requires_grad_()
            y = layer(z, mode=layer.auto_mode(z))[0]
            (g,) = torch.autograd.grad(y.square().sum(), z)
            return g.square().sum()

        fd = (f(x + 1e-5 * v) - f(x - 1e-5 * v)) / 2e-5
    torch.testing.assert_close((h * v).sum(), fd, rtol=1e-6, atol=1e-8)


# Every custom autograd node of the package is an ops.first_order.Function with `twice`
# (FIRST_ORDER_ONLY names the exceptions), or is named here: a plain
# torch.autograd.Function whose backward is written in differentiable ops over its saved
# inputs, so that it differentiates twice as it is, with the test that checks it so.
TWICE_NODES = {
    "rnnzoo.ops.finite._Zeroed": "tests/ops/test_first_order.py::test_feature_map_nodes_twice",
    "rnnzoo.ops.feature_maps._CausalKernel":
        "tests/ops/test_first_order.py::test_feature_map_nodes_twice",
    "rnnzoo.ops.feature_maps._Transposed":
        "tests/ops/test_first_order.py::test_feature_map_nodes_twice",
    "rnnzoo.cells.quasi._SRUCellState":
        "tests/cells/test_quasi.py::test_sru_state_and_tap_sum_second_derivatives",
    "rnnzoo.cells.quasi._TapSum":
        "tests/cells/test_quasi.py::test_sru_state_and_tap_sum_second_derivatives",
    "rnnzoo.ops.sequence_parallel._AllReduce":
        "tests/train/test_sequence_parallel_second_order.py"
        "::test_second_derivative_across_processes_equals_one_process",
    "rnnzoo.layers.rwkv6._NegExp":
        "tests/layers/test_rwkv6_mix_project.py::test_mix_project_and_negexp_second_derivatives",
    # C kernels whose backward switches to torch's differentiable ops under grad mode
    "rnnzoo.ops.native.attention._Bmm": "tests/ops/test_first_order.py::test_native_plain_nodes_twice",
    "rnnzoo.ops.native.conv._ScaledValues":
        "tests/ops/test_first_order.py::test_native_plain_nodes_twice",
    "rnnzoo.ops.native.linear._Linear": "tests/ops/test_native_linear.py::test_linear_second_derivative",
    "rnnzoo.ops.native.linear._Pieces":
        "tests/ops/test_native_linear.py::test_linear_pieces_second_derivative_and_fallback",
    "rnnzoo.ops.native.memory_gelu._Gelu":
        "tests/ops/test_native_memory_gelu.py::test_gelu_and_gelu_back_second_derivative",
    "rnnzoo.ops.native.token_mix._Pointwise": "tests/ops/test_native_token_mix.py::test_tanh_equals_torch",
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
            if sub.__module__.startswith("rnnzoo.") and sub not in (first_order.Function,
                                                              first_order.Transformable):
                found[f"{sub.__module__}.{sub.__qualname__}"] = sub
    return found


# first_order.Functions without `twice`: create_graph=True through them raises
FIRST_ORDER_ONLY = {
    # a CUDA graph's replay (cells.steps' `fused` mode on a GPU with cuda_graph=True): the
    # captured backward has no graph to differentiate
    "rnnzoo.cells.steps._Fresh",
}


def test_every_first_order_node_has_twice():
    """A first_order.Function without `twice` raises under create_graph: none but the named."""
    nodes = _package_nodes()
    bare = {n for n, c in nodes.items()
            if issubclass(c, first_order.Function) and "twice" not in c.__dict__}  # as the guard
    assert bare == FIRST_ORDER_ONLY, sorted(bare ^ FIRST_ORDER_ONLY)


def test_every_autograd_node_is_first_order_or_named():
    """Every torch.autograd.Function in the package is a first_order.Function, or a node named
    in TWICE_NODES, differentiable twice as it is, with the test that checks it so."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    plain = {n for n, c in _package_nodes().items() if not issubclass(c, first_order.Function)}
    assert plain == set(TWICE_NODES), (
        f"neither first_order.Function nor named as differentiable twice: "
        f"{sorted(plain - set(TWICE_NODES))}; named but gone or first_order: "
        f"{sorted(set(TWICE_NODES) - plain)}")
    for test in TWICE_NODES.values():
        path, fn = test.split("::")
        assert f"def {fn}(" in (root / path).read_text(), test
