"""ops.native.head_norm: RMSNorm over groups of channels times its weight and a gate (none,
silu, sigmoid), in C, against its PyTorch form: the output and the gradients of o, z and the
weight, float64 and float32, one group per row or several, odd widths, 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, native_vs_torch, outputs_and_grads

from rnnzoo.ops.native import head_norm


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("act", [None, "silu", "sigmoid"])
@pytest.mark.parametrize("G,n", [(1, 13), (3, 5)])
@pytest.mark.parametrize("threads", [1, 2])
def test_rms_gate_matches_torch(monkeypatch, dtype, tol, act, G, n, threads):
    assert head_norm.load() is not None
    calls = counter(monkeypatch, head_norm, "load")
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    o, z, w = r(2, 7, G * n), 3 * r(2, 7, G * n), 1 + r(G, n) / 4
    ins = [t.requires_grad_() for t in ((o, z, w) if act else (o, w))]

    def run():
        out = head_norm.rms_gate(o, w, n, 1e-5, z if act else None, act)
        return outputs_and_grads([out], ins)

    got, want = native_vs_torch(run, threads)
    assert calls[0] == 1  # the native call (the forced one never loads)
    assert_close(got, want, ["out", "o", "z", "w"] if act else ["out", "o", "w"], tol)
