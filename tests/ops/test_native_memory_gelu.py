"""ops.native.memory_gelu: the memories' tanh GELU in C against ATen's (F.gelu tanh and
aten.gelu_backward, whose own backward is PyTorch's double backward), values and the
gradients the chunk forms take (through gelu and through gelu_back: g''), float64 to 1e-12
and float32 to 1e-5 over |z| up to 60 (where tanh saturates); and ops.memory's _gelu and
_gelu_back run it on the CPU (counted) and ATen under backend.force("torch")."""

from __future__ import annotations

import pytest
import torch
from _native_check import counter, outputs_and_grads, threads
from _second_order import second_order

from rnnzoo.ops import backend, memory
from rnnzoo.ops.native import memory_gelu


def _values(dtype):
    g = torch.Generator().manual_seed(0)
    z = torch.cat([3 * torch.randn(997, generator=g, dtype=dtype),
                   torch.tensor([0.0, -60.0, 60.0, -9.0, 9.0, 1e-8, -1e-8], dtype=dtype)])
    return z, torch.randn(z.shape, generator=g, dtype=dtype)


def _both(z, g):
    return outputs_and_grads([memory._gelu(z), memory._gelu_back(g, z)], [z, g])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_native_gelu_equals_aten(dtype, tol, monkeypatch):
    calls = counter(monkeypatch, memory_gelu, "gelu", "gelu_back")
    z, g = (t.requires_grad_() for t in _values(dtype))
    with threads(2):
        native = _both(z, g)
    assert calls[0] == 2
    with backend.force("torch"):
        ref = _both(z, g)
    assert calls[0] == 2                                                  # torch: no call
    for a, b in zip(native, ref):
        assert (a - b).abs().max() < tol * (1 + b.abs().max())
    assert all(t.abs().max() > 0.1 for t in native)


@pytest.mark.parametrize("strided", [False, True])
def test_gelu_and_gelu_back_second_derivative(strided):
    """Under create_graph=True gelu's backward (gelu_back) and gelu_back's `twice` (aten's
    gelu_backward replayed over the saved g and z) give the second derivative of both in z
    and g, float64, against a central difference and aten's own double backward; z and g
    transposed views (their .contiguous() copies have no autograd history)."""
    lib = memory_gelu.load()
    if lib is None:
        pytest.skip("memory_gelu does not build")
    gen = torch.Generator().manual_seed(3)
    z, g = (torch.randn(3, 5, dtype=torch.float64, generator=gen).requires_grad_()
            for _ in range(2))

    def view(t):
        return t.t() if strided else t

    def native(z, g):
        return memory_gelu.gelu(lib, view(z)), memory_gelu.gelu_back(lib, view(g), view(z))

    def plain(z, g):
        return (torch.nn.functional.gelu(view(z), approximate="tanh"),
                memory_gelu._torch_gelu_back(view(g), view(z)))

    for a, b in zip(native(z, g), plain(z, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, [z, g], plain)
