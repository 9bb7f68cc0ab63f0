"""ops.native.ssd_scan runs each state in tiles of 16 float / 8 double columns with a
zero-padded last tile: value widths over one tile and not a multiple of it (V = 21: float
16 + 5, double 8 + 8 + 5; V = 16: whole tiles only), heads sharing a group, against the
chunked PyTorch form, outputs, final state and every gradient."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter

from rnnzoo.ops import backend
from rnnzoo.ops.chunk import linear
from rnnzoo.ops.native import ssd_scan


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("V", [21, 16])
def test_native_ssd_tiles_match_chunked(monkeypatch, dtype, tol, V):
    calls = counter(monkeypatch, ssd_scan, "ssd")
    gen = torch.Generator().manual_seed(3)
    B, T, G, H, K = 2, 45, 1, 2, 9
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v, S0 = r(B, T, G, K), r(B, T, G, K), r(B, T, H, V), r(B, H, K, V)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype)
    ins = [t.requires_grad_() for t in (q, k, v, g, S0)]
    wo, wS = r(B, T, H, V), r(B, H, K, V)

    def run():
        o, S = linear.ssd(q, k, v, g, scale=0.6, initial_state=S0, chunk_size=16)
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    got = run()
    with backend.force("torch"):
        want = run()
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "q", "k", "v", "g", "S0"], tol)
