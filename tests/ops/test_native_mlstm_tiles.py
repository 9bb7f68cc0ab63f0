"""ops.native.mlstm_scan runs the memory in tiles of 16 float / 8 double columns with a
zero-padded last tile: value widths over one tile and not a multiple of it (V = 21: float
16 + 5, double 8 + 8 + 5; V = 16: whole tiles only) against the reference loop
`mlstm_recurrent`, outputs, final (C, n, m) and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter

from rnnzoo.ops.chunk.linear import mlstm, mlstm_recurrent
from rnnzoo.ops.native import mlstm_scan


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 5e-5)])
@pytest.mark.parametrize("V", [21, 16])
def test_native_mlstm_tiles_match_the_loop(monkeypatch, dtype, tol, V):
    calls = counter(monkeypatch, mlstm_scan, "mlstm")
    gen = torch.Generator().manual_seed(5)
    B, T, H, K = 2, 41, 2, 7
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    li, lf = 2 * r(B, T, H), F.logsigmoid(r(B, T, H) + 1)
    C0, n0, m0 = r(B, H, K, V), r(B, H, K), r(B, H)
    ins = [t.requires_grad_() for t in (q, k, v, li, lf, C0, n0, m0)]
    ws = [r(B, T, H, V), r(B, H, K, V), r(B, H, K), r(B, H)]

    def run(f):
        h, state = f(q, k, v, li, lf, initial_state=(C0, n0, m0))
        outs = [h, *state]
        loss = sum((o * w).sum() for o, w in zip(outs, ws))
        return outs + list(torch.autograd.grad(loss, ins))

    got = run(mlstm)
    assert calls[0] == 1
    want = run(mlstm_recurrent)
    assert_close(got, want, ["h", "C", "n", "m", "q", "k", "v", "li", "lf", "C0", "n0", "m0"], tol)
