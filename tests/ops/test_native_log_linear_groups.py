"""ops.native.log_linear.chunks_tm (log_linear.c's ll_fwd / ll_bwd on the layer's time-major
tensors): q and k read in place as strided views, one group shared by H / G heads, each
head's q and k gradient summed into its group's, against the PyTorch block (ops.log_linear's
_Intra and the chunk states in einsum) on heads-first copies with the groups repeated;
float64 tight, float32 loose, C not a tile multiple, K != V, one chunk (no pair), B = 1, one
head, 1 and 2 threads. And ops.log_linear.log_linear_attention with grouped q, k (the C block
on and off the aligned grid: padded chunks, the last chunk's token-by-token buckets, live
initial buckets) against the recurrent reference on repeated heads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads

from rnnzoo.ops import log_linear as ll
from rnnzoo.ops.native import log_linear as native_ll

lib = native_ll.load()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler")


def _inputs(B, H, G, N, C, K, V, L, dtype, seed=0):
    """xbc (B, N C, W): q, k are its column blocks [.., G K) and [G K, 2 G K) viewed as
    (B, N C, G, K) (strided, as the layer's conv output); the rest heads-first as chunks."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)   # noqa: E731
    ip = [i for i in range(1, N) for m in range(4) if i >> m & 1]
    P = len(ip)
    cP = u(B, H, P, N) * torch.tensor([[float(j < i) for j in range(N)] for i in ip],
                                      dtype=dtype).view(1, 1, P, N)
    xbc = r(B, N * C, 2 * G * K + 3)
    ins = [xbc, r(B, N * C, H, V), (-u(B, H, N, C) * 0.5).cumsum(-1), u(B, N * C, H, L) + 0.5,
           u(B, H, N, C), u(B, H, P, C) + 0.5, cP,
           u(B, H, L - 1, N) * (u(1, 1, L - 1, N) < 0.5)]
    for t in ins:
        t.requires_grad_()
    return torch.tensor(ip, dtype=torch.long), ins


def _qk(xbc, G, K):
    B, Tp, _ = xbc.shape
    return xbc[..., :G * K].view(B, Tp, G, K), xbc[..., G * K:2 * G * K].view(B, Tp, G, K)


def _reference(ip, xbc, v, G, lam, f, w, cP, cF, ng, K):
    B, H, N, C = G.shape
    q, k = (ll._heads(t, H) for t in _qk(xbc, ng, K))
    hf = [t.transpose(1, 2).unflatten(2, (N, C)) for t in (q, k, v, lam)]   # (B, H, N, C, .)
    q, k, v, lam = hf
    L, V = lam.shape[-1], v.shape[-1]
    off = torch.arange(C)
    y = ll._Intra.apply(q, k, v, G, lam, ll._levels(off[:, None], off[None, :], L))
    U = torch.einsum("bhnsk,bhnsv->bhnkv", k * f[..., None], v).flatten(3)
    if ip.numel():
        Hp = (cP @ U).unflatten(-1, (K, V))
        y = y.index_add(2, ip, (q.index_select(2, ip) * w[..., None]) @ Hp)
    else:
        y = y + (w.sum() + cP.sum())
    return y.flatten(2, 3).transpose(1, 2), (cF @ U).unflatten(-1, (K, V))


def _native(ip, xbc, v, G, lam, f, w, cP, cF, ng, K):
    q, k = _qk(xbc, ng, K)
    return native_ll.chunks_tm(lib, ip, q, k, v, G, lam, f, w, cP, cF)


@pytest.mark.parametrize("B,H,G,N,C,K,V,L", [(2, 4, 1, 5, 8, 5, 3, 6), (1, 4, 2, 3, 37, 4, 7, 9),
                                             (2, 1, 1, 1, 16, 6, 6, 7),
                                             (1, 2, 1, 9, 64, 17, 33, 12),
                                             (2, 3, 3, 4, 16, 8, 8, 8)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_grouped_chunks_match_torch(B, H, G, N, C, K, V, L, dtype, tol, nthreads):
    ip, ins = _inputs(B, H, G, N, C, K, V, L, dtype)
    with threads(nthreads):
        got = outputs_and_grads(_native(ip, *ins, G, K), ins)
    want = outputs_and_grads(_reference(ip, *ins, G, K), ins)
    want[-1] = want[-1] * (ins[-1] != 0)  # the kernel's dcP, dcF: 0 where cP, cF are
    want[-2] = want[-2] * (ins[-2] != 0)
    got[2] = got[2][..., :2 * G * K]  # xbc's last columns are read by neither
    want[2] = want[2][..., :2 * G * K]
    assert_close(got, want, ["y", "F", "xbc", "v", "G", "lam", "f", "w", "cP", "cF"], tol)


@pytest.mark.parametrize("T,n0,buckets", [(40, 0, False), (37, 5, False), (23, 3, True),
                                          (64, 0, True)])
def test_grouped_op_matches_recurrent(T, n0, buckets):
    gen = torch.Generator().manual_seed(T + n0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    B, H, G, K, V, L = 2, 4, 2, 3, 5, 7
    xbc = r(B, T, 2 * G * K + 1)
    v = r(B, T, H, V)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    lam = torch.rand(B, T, H, L, generator=gen, dtype=torch.float64) + 0.5
    S = r(B, H, L - 1, K, V) if buckets else torch.zeros(B, H, L - 1, K, V, dtype=torch.float64)
    count = torch.full((B,), float(n0), dtype=torch.float64)
    ins = [xbc, v, g, lam, S]
    for t in ins:
        t.requires_grad_()
    wy, wS = r(B, T, H, V), r(B, H, L - 1, K, V)

    def run(grouped):
        q, k = (xbc[..., a * G * K:(a + 1) * G * K].view(B, T, G, K) for a in (0, 1))
        if grouped:
            y, (S1, n1) = ll.log_linear_attention(q, k, v, g, lam, scale=0.7,
                                                  initial_state=(S, count), chunk_size=8)
        else:
            y, (S1, n1) = ll.log_linear_attention_recurrent(
                ll._heads(q, H), ll._heads(k, H), v, g, lam, scale=0.7,
                initial_state=(S, count))
        loss = (y * wy).sum() + (S1 * wS).sum()
        return [y, S1, n1, *torch.autograd.grad(loss, ins)]

    calls = []
    real = native_ll.chunks_tm
    native_ll.chunks_tm = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        got = run(True)
    finally:
        native_ll.chunks_tm = real
    assert calls, "the C block did not run"
    want = run(False)
    assert_close(got, want, ["y", "S", "count", "xbc", "v", "g", "lam", "S0"], 1e-10)
