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
