"""ops.native.memory_gelu: the memories' tanh GELU in C against ATen's (F.gelu tanh and
aten.gelu_backward, whose own backward is PyTorch's double backward), values and the
gradients the chunk forms take (through gelu and through gelu_back: g''), float64 to 1e-12
and float32 to 1e-5 over |z| up to 60 (where tanh saturates); and ops.memory's _gelu and
_gelu_back run it on the CPU (counted) and ATen under backend.force("torch")."""

from __future__ import annotations

import pytest
import torch
from _native_check import counter, outputs_and_grads, threads

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
