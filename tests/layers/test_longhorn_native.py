"""ops.native.longhorn_scan: Longhorn's diagonal scan in C (the CPU `scan` mode) against the
reference loop (`sequential`): outputs, final state and the gradients of u, beta, k, q and the
initial state (with a gradient on the final state too), T not a multiple of the 32-step
checkpoint, d_inner not a multiple of the 16-channel block, 1 and 2 threads; and the layer's
`scan` mode against its PyTorch path (linear_scan, under backend.force("torch"))."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers import longhorn
from rnnzoo.ops import backend
from rnnzoo.ops.native import longhorn_scan


@pytest.fixture
def calls(monkeypatch):
    n = [0]
    real = longhorn_scan.longhorn_scan

    def counted(*a, **kw):
        n[0] += 1
        return real(*a, **kw)
    monkeypatch.setattr(longhorn.native_longhorn, "longhorn_scan", counted)
    return n


def _close(got, want, tol):
    for i, (p, w) in enumerate(zip(got, want)):
        assert p.dtype == w.dtype and p.shape == w.shape, i
        assert ((p - w).abs().max() / w.abs().max()).item() < tol, i


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,T,D,N", [(3, 70, 20, 5), (2, 1, 3, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_scan_matches_the_loop(calls, dtype, tol, B, T, D, N, threads):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    u, k, q, S0 = r(B, T, D), r(B, T, N), r(B, T, N), r(B, D, N)
    beta = 3 * torch.rand(B, T, D, generator=gen, dtype=dtype)
    ins = [t.requires_grad_() for t in (u, beta, k, q, S0)]
    wy, wS = r(B, T, D), r(B, D, N)

    def run(mode):
        y, S = longhorn.longhorn_recurrence(u, beta, k, q, S0, mode=mode)
        return [y, S, *torch.autograd.grad((y * wy).sum() + (S * wS).sum(), ins)]

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = run("scan")
    finally:
        torch.set_num_threads(old)
    assert calls[0] == 1
    _close(got, run("sequential"), tol)


def test_layer_scan_equals_its_pytorch_path(calls):
    """The whole layer, float32 at the default sizes but short: native `scan` against the
    linear_scan path, outputs and every parameter's gradient."""
    torch.manual_seed(0)
    layer = rnnzoo.create("longhorn", d_model=32)
    x = torch.randn(2, 40, 32)

    def run():
        layer.zero_grad()
        y, (S, _) = layer(x, mode="scan")
        (y.square().sum() + S.sum()).backward()
        return [y, S, *(p.grad.clone() for p in layer.parameters())]

    got = run()
    with backend.force("torch"):
        want = run()
    assert calls[0] == 1
    _close(got, want, 1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_output_head_in_c_equals_its_pytorch_form(monkeypatch, dtype, tol):
    """op_output's (y + D u) silu(z) through ops.native.gated_norm against the PyTorch form:
    value and the gradients of y, u, z, D (odd width, 3-d rows)."""
    n = [0]
    real = longhorn.gated_norm.gate_rms

    def counted(*a, **kw):
        n[0] += 1
        return real(*a, **kw)
    monkeypatch.setattr(longhorn.gated_norm, "gate_rms", counted)
    torch.manual_seed(0)
    layer = rnnzoo.create("longhorn", d_model=7, expand=1).to(dtype)
    with torch.no_grad():
        layer.D.normal_()
    y, u, z = (torch.randn(2, 5, 7, dtype=dtype, requires_grad=True) for _ in range(3))
    x = torch.randn(2, 5, 7, dtype=dtype)

    def run():
        out = layer.op_output(y, u, z, x)
        return [out, *torch.autograd.grad(out.square().sum(), (y, u, z, layer.D))]

    got = run()
    assert n[0] == 1
    with backend.force("torch"):
        want = run()
    _close(got, want, tol)
