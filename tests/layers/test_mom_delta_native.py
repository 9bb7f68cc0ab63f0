"""ops.native.delta_scan, the gated delta rule's C recurrence that mom's packed chunk mode runs
on a CPU, against the reference loop (ops.chunk.delta.delta_rule_recurrent): outputs, final
state and the gradients of q, k, v, beta, g and the initial state (with a gradient on the
final state too), T not a multiple of the 32-step checkpoint, 1 and 2 threads; and the whole
layer's chunk mode on it against its PyTorch path (backend.force("torch"))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.chunk.delta import delta_rule_recurrent
from rnnzoo.ops.native import delta_scan


def _close(got, want, tol):
    for i, (p, w) in enumerate(zip(got, want)):
        assert p.dtype == w.dtype and p.shape == w.shape, i
        assert ((p - w).abs().max() / w.abs().max()).item() < tol, i


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,T,H,K,V", [(2, 70, 3, 5, 6), (1, 1, 1, 2, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_delta_matches_the_loop(dtype, tol, B, T, H, K, V, threads):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v, S0 = r(B, T, H, V), r(B, H, K, V)
    beta = 1.5 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    g = -0.3 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    ins = [t.requires_grad_() for t in (q, k, v, beta, g, S0)]
    wo, wS = r(B, T, H, V), r(B, H, K, V)

    def grads(o, S):
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    lib = delta_scan.load()
    assert lib is not None
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = grads(*delta_scan.delta(lib, q, k, v, beta, g, S0, 0.7))
    finally:
        torch.set_num_threads(old)
    want = grads(*delta_rule_recurrent(q, k, v, beta, g, scale=0.7, initial_state=S0))
    _close(got, want, tol)


def test_mom_chunk_on_the_native_delta_equals_its_pytorch_path(monkeypatch):
    """float32, default heads (K = 32, V = 64), a short sequence: outputs, final state and
    every parameter's gradient, the C recurrence proven to run."""
    ran = []
    real = delta_scan.delta
    monkeypatch.setattr(delta_scan, "delta", lambda *a: ran.append(1) or real(*a))
    torch.manual_seed(0)
    layer = rnnzoo.create("mom", d_model=64)
    x = torch.randn(2, 40, 64)

    def run():
        layer.zero_grad()
        y, (S, _) = layer(x, mode="chunk")
        (y.square().sum() + S.sum()).backward()
        return [y, S, *(p.grad.clone() for p in layer.parameters())]

    got = run()
    assert ran
    with backend.force("torch"):
        want = run()
    _close(got, want, 1e-4)
