"""ops.native.delta_scan with n > 1 steps a token (DeltaProduct's Householder steps: one
query read after a token's last step, its gate at its first), as ops.chunk.delta.delta_product
runs it on a CPU, against the reference loop (delta_product_recurrent): outputs, final state
and every gradient, T n not a multiple of the 32-step checkpoint, with and without the gate,
1 and 2 threads, V over one and two column tiles (n = 1: the plain delta rule); and delta_product proven to take it (not under force("torch"))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo.ops import backend
from rnnzoo.ops.chunk.delta import delta_product, delta_product_recurrent
from rnnzoo.ops.native import delta_scan


def _inputs(B, T, n, H, K, V, dtype, gated):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, n, H, K), dim=-1)
    beta = 1.5 * torch.rand(B, T, n, H, generator=gen, dtype=dtype)
    g = -0.3 * torch.rand(B, T, H, generator=gen, dtype=dtype) if gated else None
    return [t if t is None else t.requires_grad_()
            for t in (q, k, r(B, T, n, H, V), beta, g, r(B, H, K, V))]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,T,n,H,K,V,gated", [(2, 23, 3, 2, 5, 6, True), (1, 40, 2, 1, 4, 3, False),
                                              (1, 1, 2, 1, 2, 3, True),
                                              (2, 37, 1, 2, 7, 21, True),   # two column tiles,
                                              (1, 19, 2, 1, 3, 16, True),  # the 2nd narrow
                                              (1, 21, 2, 2, 19, 20, True),  # dk, dq summed
                                              # NV rows at once: K = 19 is two full groups of 8
                                              # floats (4 doubles) and a part
                                              (2, 70, 1, 2, 9, 40, True),   # wide tiles of 32
                                              (1, 45, 3, 1, 6, 72, False)])  # floats (wide.h): the
# last narrow, two checkpoint blocks
@pytest.mark.parametrize("n_threads", [1, 2])
def test_delta_product_on_the_kernel_matches_the_loop(monkeypatch, dtype, tol, B, T, n, H, K, V,
                                                       gated, n_threads):
    ran = counter(monkeypatch, delta_scan, "delta")
    q, k, v, beta, g, S0 = ins = _inputs(B, T, n, H, K, V, dtype, gated)
    wrt = [t for t in ins if t is not None]
    want = outputs_and_grads(delta_product_recurrent(q, k, v, beta, g, scale=0.7,
                                                     initial_state=S0), wrt)
    names = [f"out{i}" for i in range(len(want))]
    lib = delta_scan.load()
    assert lib is not None
    with threads(n_threads):  # the kernel itself, n steps a token
        got = outputs_and_grads(delta_scan.delta(
            lib, q, k.flatten(1, 2), v.flatten(1, 2), beta.flatten(1, 2),
            beta.new_zeros(B, T, H) if g is None else g, S0, 0.7, n), wrt)
        assert_close(got, want, names, tol)
        got = outputs_and_grads(delta_product(q, k, v, beta, g, scale=0.7, initial_state=S0), wrt)
    assert ran[0] == 2  # delta_product ran the kernel
    assert_close(got, want, names, tol)
    with backend.force("torch"):
        delta_product(q, k, v, beta, g, scale=0.7, initial_state=S0)
    assert ran[0] == 2
