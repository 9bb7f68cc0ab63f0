"""ops.native.log_linear.chunks_tm with `lp` (the pairs' levels: log_linear.c makes the pairs'
row weights w = lam[.., lp] e^G itself, and adds dw's terms into dlam and dG) against the same
call given w computed in torch from lam and G: outputs, final buckets and the gradients of q, k,
v, G, lam, f, cP, cF; float64 tight, float32 loose, C not a tile multiple, pairs at the top
level, B = 1, one head, 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads

from rnnzoo.ops.native import log_linear as native_ll

lib = native_ll.load()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler")


def _case(B, H, N, C, K, V, L, dtype):
    g = torch.Generator().manual_seed(N * C + H)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)   # noqa: E731
    pairs = [(i, min(1 + m + 3, L - 1)) for i in range(1, N) for m in range(4) if i >> m & 1]
    ip = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    lp = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    P = len(pairs)
    cP = u(B, H, P, N) * torch.tensor([[float(j < i) for j in range(N)] for i, _ in pairs],
                                      dtype=dtype).view(1, 1, P, N)
    ins = [r(B, N * C, 1, K), r(B, N * C, 1, K), r(B, N * C, H, V),
           (-u(B, H, N, C) * 0.5).cumsum(-1), u(B, N * C, H, L) + 0.5, u(B, H, N, C), cP,
           u(B, H, L - 1, N) * (u(1, 1, L - 1, N) < 0.5)]
    for t in ins:
        t.requires_grad_()
    return ip, lp, ins


def _w(ip, lp, G, lam):
    """torch's w (B, H, P, C): lam at each pair's chunk and level times e^G there."""
    B, H, N, C = G.shape
    lam_p = lam.view(B, N, C, H, -1)[:, ip, :, :, lp].permute(1, 3, 0, 2)
    return lam_p * G.index_select(2, ip).exp()


@pytest.mark.parametrize("B,H,N,C,K,V,L", [(2, 3, 6, 8, 5, 3, 12), (1, 1, 9, 37, 4, 7, 12),
                                           (1, 2, 8, 64, 16, 16, 10), (2, 2, 5, 4, 3, 3, 6)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_pair_weights_made_in_c(B, H, N, C, K, V, L, dtype, tol, nthreads):
    ip, lp, ins = _case(B, H, N, C, K, V, L, dtype)
    q, k, v, G, lam, f, cP, cF = ins
    with threads(nthreads):
        got = outputs_and_grads(native_ll.chunks_tm(lib, ip, q, k, v, G, lam, f, None, cP, cF,
                                                    lp=lp), ins)
        want = outputs_and_grads(native_ll.chunks_tm(lib, ip, q, k, v, G, lam, f,
                                                     _w(ip, lp, G, lam), cP, cF), ins)
    names = ["y", "F", "dq", "dk", "dv", "dG", "dlam", "df", "dcP", "dcF"]
    assert_close(got, want, names, tol)
    # the pairs' terms reach dlam at their levels (a kernel that drops them fails here)
    assert got[6][:, :, :, lp.unique()].abs().sum() > 0


def test_w_or_lp():
    ip, lp, ins = _case(1, 1, 3, 4, 2, 2, 6, torch.float64)
    q, k, v, G, lam, f, cP, cF = ins
    with pytest.raises(ValueError):
        native_ll.chunks_tm(lib, ip, q, k, v, G, lam, f, None, cP, cF)
    with pytest.raises(ValueError):
        native_ll.chunks_tm(lib, ip, q, k, v, G, lam, f, _w(ip, lp, G, lam), cP, cF, lp=lp)
