"""ops.native.token_mix (RWKV's six token-shift mixes in C) equals torch's addcmuls, values
and gradients (an unused mix included), and the rwkv7 layer runs it on the CPU."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads

import rnnzoo
from rnnzoo.ops.native import token_mix


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_addcmul_values_and_grads(dtype):
    g = torch.Generator().manual_seed(0)
    x, step = (torch.randn(3, 7, 5, generator=g, dtype=dtype).requires_grad_() for _ in range(2))
    mu = torch.rand(6, 5, generator=g, dtype=dtype).requires_grad_()
    with threads(2):
        got = token_mix.token_mix(token_mix.load(), x, step, mu)
        got = outputs_and_grads([o for i, o in enumerate(got) if i != 2], (x, step, mu))
    want = outputs_and_grads([torch.addcmul(x, step, m) for i, m in enumerate(mu) if i != 2],
                             (x, step, mu))
    assert_close(got, want, ["x0", "x1", "x3", "x4", "x5", "dx", "dstep", "dmu"],
                 1e-14 if dtype == torch.float64 else 1e-6)


def test_rwkv7_layer_runs_it(monkeypatch):
    calls = counter(monkeypatch, token_mix, "token_mix")
    layer = rnnzoo.create("rwkv7", d_model=8, num_heads=2, low_rank=2)
    layer(torch.randn(2, 5, 8))
    assert calls[0] == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("rows", [1, 11])
def test_ddlerp_mixes_and_grads_equal_torch(dtype, nthreads, rows):
    """RWKV-6's per-row mixes x + step o c_m and their backward (dc_m written over g_m for
    all but the first, as the layer calls it) against torch's addcmul and autograd."""
    g = torch.Generator().manual_seed(1)
    x, step = (torch.randn(rows, 9, generator=g, dtype=dtype) for _ in range(2))
    c = [torch.randn(rows, 9, generator=g, dtype=dtype) for _ in range(5)]
    gm = [torch.randn(rows, 9, generator=g, dtype=dtype) for _ in range(5)]
    lib = token_mix.load()
    xr, sr = x.clone().requires_grad_(), step.clone().requires_grad_()
    cr = [t.clone().requires_grad_() for t in c]
    want = torch.stack([torch.addcmul(xr, sr, t) for t in cr])
    want_d = torch.autograd.grad(want, [xr, sr, *cr], torch.stack(gm))
    dc = [torch.empty_like(x), *gm[1:]]
    with threads(nthreads):
        got = token_mix.ddlerp_mixes(lib, x, step, c)
        dx, dstep, dmu = token_mix.ddlerp_grads(lib, [t.clone() if i == 0 else t
                                                      for i, t in enumerate(gm)],
                                                c, step, dc)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert_close([got, dx, dstep, *dc, dmu], [want, *want_d[:2], *want_d[2:],
                                             torch.stack([t.sum(0) for t in want_d[2:]])],
                 ["mixes", "dx", "dstep"] + [f"dc{i}" for i in range(5)] + ["dmu"], tol)


def test_rwkv6_layer_runs_the_ddlerp_kernels(monkeypatch):
    calls = counter(monkeypatch, token_mix, "ddlerp_mixes", "ddlerp_grads")
    layer = rnnzoo.create("rwkv6", d_model=8, head_dim=4, mix_rank=2, decay_rank=2)
    layer(torch.randn(2, 5, 8, requires_grad=True))[0].sum().backward()
    assert calls[0] == 2
