"""ops.native.head_norm (the delta layers' per-head RMSNorm with its output gate, in C)
against its PyTorch form: output and the gradients of x, z and w, float64 and float32,
every gate (none, SiLU, sigmoid), odd group sizes, 1 and 2 threads; and the layers'
output heads proven to take it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo import create
from rnnzoo.ops.native import head_norm


def _reference(x, w, G, eps, z, act):
    y = F.rms_norm(x.unflatten(-1, (-1, G)), (G,), eps=eps).flatten(-2) * w
    if z is not None:
        y = y * (F.silu(z) if act == "silu" else torch.sigmoid(z))
    return y


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("act", [None, "silu", "sigmoid"])
@pytest.mark.parametrize("G,heads", [(5, 3), (16, 2)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_head_norm_matches_torch(dtype, tol, act, G, heads, n_threads):
    gen = torch.Generator().manual_seed(0)
    W = G * heads
    x, z = (torch.randn(2, 7, W, generator=gen, dtype=dtype).requires_grad_() for _ in range(2))
    w = (1 + 0.3 * torch.randn(W, generator=gen, dtype=dtype)).requires_grad_()
    z = z if act else None
    wrt = [t for t in (x, z, w) if t is not None]
    want = outputs_and_grads(_reference(x, w, G, 1e-5, z, act), wrt)
    lib = head_norm.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(head_norm.head_norm(lib, x, w, G, 1e-5, z, act), wrt)
    assert_close(got, want, [f"out{i}" for i in range(len(want))], tol)


@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet", "kda", "momentum_deltanet"])
def test_the_delta_layers_run_it(monkeypatch, name):
    ran = counter(monkeypatch, head_norm, "head_norm")
    layer = create(name, d_model=8, num_heads=2)
    layer(torch.randn(1, 3, 8))
    assert ran[0] == 1
