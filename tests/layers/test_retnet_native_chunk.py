"""retnet's chunk mode on a CPU runs Mamba-2's SSD op with one group per head, whose C
recurrence (ops.native.ssd_scan) is called once per forward; its output, final state and
input gradient equal the sequential reference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import rnnzoo
from rnnzoo.ops.native import ssd_scan

sys.path.insert(0, str(Path(__file__).parents[1] / "ops"))
from _native_check import counter  # noqa: E402


@pytest.mark.skipif(ssd_scan.load() is None, reason="no C compiler: the PyTorch path only")

def test_retnet_chunk_runs_native_ssd(monkeypatch):
    calls = counter(monkeypatch, ssd_scan, "ssd")
    torch.manual_seed(0)
    layer = rnnzoo.create("retnet", d_model=16, num_heads=2, chunk_size=8).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64, requires_grad=True)
    y, (S, pos) = layer(x, mode="chunk")
    assert calls[0] == 1
    (dx,) = torch.autograd.grad(y.sum() + S.sum(), x)
    y_ref, (S_ref, pos_ref) = layer(x, mode="sequential")
    (dx_ref,) = torch.autograd.grad(y_ref.sum() + S_ref.sum(), x)
    assert calls[0] == 1
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(S, S_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-9, atol=1e-9)
    assert torch.equal(pos, pos_ref)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_retnet_complex_rotation_equals_rotary(monkeypatch, dtype, tol):
    """On the native path rotary.turn turns adjacent pairs as one complex product; its real
    form (compile, other devices and dtypes, RNNZOO_NATIVE=0) is the same rotation: retnet's
    q, k and the gradients of x through them agree, from a nonzero start."""
    from rnnzoo.ops import backend

    torch.manual_seed(0)
    layer = rnnzoo.create("retnet", d_model=16, num_heads=2).to(dtype)
    x = torch.randn(2, 9, 16, dtype=dtype, requires_grad=True)
    pos = torch.tensor([0.0, 5.0], dtype=dtype)
    w = torch.randn(2, 2, 9, 2, 8, dtype=dtype)

    def run():
        q, k, *_ = layer.lion_inputs(x, pos)
        return [q, k, *torch.autograd.grad((torch.stack([q, k]) * w).sum(), x)]

    got = run()
    monkeypatch.setattr(backend, "use_native", lambda *t: False)
    want = run()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_retnet_head_native_matches_torch(monkeypatch, dtype, tol):
    """The gated per-head LayerNorm (lion_output) through ops.native.gated_norm.norm_gate
    against its PyTorch form (backend.force): output and the gradients of o, x and the
    norm's and gate's parameters; head_dim 6, value groups of 12 (two heads)."""
    from rnnzoo.ops import backend
    from rnnzoo.ops.native import gated_norm

    calls = counter(monkeypatch, gated_norm, "norm_gate")
    torch.manual_seed(0)
    layer = rnnzoo.create("retnet", d_model=12, num_heads=2).to(dtype)
    with torch.no_grad():
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    x = torch.randn(3, 7, 12, dtype=dtype, requires_grad=True)
    o = torch.randn(3, 7, 2, 12, dtype=dtype, requires_grad=True)
    params = [o, x, layer.norm.weight, layer.norm.bias, layer.gate.weight]
    w = torch.randn(3, 7, 12, dtype=dtype)

    def run():
        y = layer.lion_output(o, x)
        return [y, *torch.autograd.grad((y * w).sum(), params)]

    got = run()
    with backend.force("torch"):
        want = run()
    assert calls[0] == 1
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= tol * b.abs().max()
