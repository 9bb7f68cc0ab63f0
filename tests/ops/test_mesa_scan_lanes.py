"""ops.native.mesa_scan runs its (batch row, head) pairs in groups of `lanes` (one pair per
vector lane; 16 floats or 8 doubles with AVX-512), each thread a run of whole groups, the
checkpoints in the groups' lane layout: pair counts that leave a ragged last group (its spare
lanes repeat a pair and are not stored), more groups than threads, one pair alone, and solves
that stop (cg_tol) at different iterations in the lanes of one group, against the PyTorch step
loop: outputs, final states and every input gradient, float64 tight and float32 loose."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter
from _native_check import threads as threads_

from rnnzoo.ops.mesa import mesa, mesa_recurrent
from rnnzoo.ops.native import mesa_scan


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, mesa_scan, "mesa")


def test_groups_cover_the_pairs_in_whole_groups():
    lib = mesa_scan.load()
    if lib is None:
        pytest.skip("no C compiler")
    for dtype in (torch.float32, torch.float64):
        lanes = mesa_scan._groups(lib, dtype, 1)[0]
        assert lanes in (2, 4, 8, 16)
        with threads_(2):
            ranges = mesa_scan._groups(lib, dtype, 3 * lanes + 5)[1]
        assert ranges[0][0] == 0 and ranges[-1][1] == 3 * lanes + 5
        assert all(a % lanes == 0 and b > a for a, b in ranges) and len(ranges) == 2
        assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,K,V,cg_tol,threads", [(5, 19, 4, 7, 5, 1e-3, 2),
                                                      (3, 11, 7, 32, 32, 1e-4, 1),
                                                      (1, 13, 1, 6, 3, 0.0, 2),
                                                      (9, 10, 2, 5, 6, 1e-3, 1)])
def test_lane_groups_match_the_loop(calls, dtype, tol, B, T, H, K, V, cg_tol, threads):
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v, g = r(B, T, H, V), F.logsigmoid(r(B, T, H) + 2)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    lamb = torch.rand(H, K, generator=gen, dtype=dtype) * 2 + 0.05  # mixed conditioning
    k0 = r(B, H, K, K)
    H0 = k0 @ k0.mT / K + 0.1 * r(B, H, K, K)
    G0 = r(B, H, K, V)
    ins = [t.requires_grad_() for t in (q, k, v, g, beta, lamb, H0, G0)]
    wo, wH, wG = r(B, T, H, V), r(B, H, K, K), r(B, H, K, V)

    def run(op):
        o, (HT, GT) = op(q, k, v, g, beta, lamb, initial_state=(H0, G0), cg_steps=12,
                         cg_tol=cg_tol)
        loss = (o * wo).sum() + (HT * wH).sum() + (GT * wG).sum()
        return [o, HT, GT, *torch.autograd.grad(loss, ins)]

    names = ["o", "H_T", "G_T", "q", "k", "v", "g", "beta", "lamb", "H0", "G0"]
    with threads_(threads):
        got = run(mesa)
    assert calls[0] == 1
    assert_close(got, run(mesa_recurrent), names, tol)
