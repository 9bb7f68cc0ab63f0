"""ops.native.log_linear (log_linear.c): the aligned chunk form's block in C, the intra-chunk
product (Q K^T o M) V with the Fenwick level weights and the pairs' reads of the chunk states
with the final buckets, against the same products in PyTorch (ops.log_linear._Intra and the
torch path's chunk states): outputs, final buckets and the gradients of all nine inputs,
float64 tight and float32 loose, odd sizes (C not a tile multiple, K != V, one chunk and no
pair, B = 1, one head), 1 and 2 threads, without a gradient on the final buckets. The whole
path against the dense chunk form: tests/ops/test_log_linear_aligned.py."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads
from _second_order import second_order

from rnnzoo.ops import log_linear as ll
from rnnzoo.ops.native import log_linear as native_ll

lib = native_ll.load()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler")


def _inputs(B, H, N, C, K, V, L, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)   # noqa: E731
    # the pairs of chunk i: one per set bit of i, each over the chunks before it
    ip = [i for i in range(1, N) for m in range(4) if i >> m & 1]
    P = len(ip)
    cP = u(B, H, P, N) * torch.tensor([[float(j < i) for j in range(N)] for i in ip],
                                      dtype=dtype).view(1, 1, P, N)
    ins = [r(B, H, N, C, K), r(B, H, N, C, K), r(B, H, N, C, V),
           (-u(B, H, N, C) * 0.5).cumsum(-1), u(B, H, N, C, L) + 0.5, u(B, H, N, C),
           u(B, H, P, C) + 0.5, cP, u(B, H, L - 1, N) * (u(1, 1, L - 1, N) < 0.5)]
    for t in ins:
        t.requires_grad_()
    return torch.tensor(ip, dtype=torch.long), ins


def _reference(ip, q, k, v, G, lam, f, w, cP, cF):
    C, L = q.shape[3], lam.shape[-1]
    K, V = q.shape[-1], v.shape[-1]
    off = torch.arange(C)
    y = ll._Intra.apply(q, k, v, G, lam, ll._levels(off[:, None], off[None, :], L))
    U = torch.einsum("bhnsk,bhnsv->bhnkv", k * f[..., None], v).flatten(3)
    if ip.numel():
        Hp = (cP @ U).unflatten(-1, (K, V))
        y = y.index_add(2, ip, (q.index_select(2, ip) * w[..., None]) @ Hp)
    else:  # no pair (one chunk): w and cP are empty, with empty gradients
        y = y + (w.sum() + cP.sum())
    return y, (cF @ U).unflatten(-1, (K, V))


@pytest.mark.parametrize("B,H,N,C,K,V,L", [(2, 2, 5, 8, 5, 3, 6), (1, 1, 3, 37, 4, 7, 9),
                                           (2, 1, 1, 16, 6, 6, 7), (1, 2, 9, 64, 17, 33, 12)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_chunks_match_torch(B, H, N, C, K, V, L, dtype, tol, nthreads):
    ip, ins = _inputs(B, H, N, C, K, V, L, dtype)
    with threads(nthreads):
        got = outputs_and_grads(native_ll.chunks(lib, ip, *ins), ins)
    want = outputs_and_grads(_reference(ip, *ins), ins)
    for i, c in ((-2, ins[-2]), (-1, ins[-1])):  # the kernel's dcP, dcF: 0 where cP, cF are
        want[i] = want[i] * (c != 0)
    names = ["y", "F", "q", "k", "v", "G", "lam", "f", "w", "cP", "cF"]
    assert_close(got, want, names, tol)


def test_chunks_without_final_gradient():
    ip, ins = _inputs(2, 2, 6, 8, 4, 5, 6, torch.float64, seed=3)
    dy = torch.randn(2, 2, 6, 8, 5, dtype=torch.float64)
    got = torch.autograd.grad(native_ll.chunks(lib, ip, *ins)[0], ins, dy)
    want = torch.autograd.grad(_reference(ip, *ins)[0], ins, dy, allow_unused=True)
    want = [torch.zeros_like(t) if g is None else g for g, t in zip(want, ins)]
    want[-2] = want[-2] * (ins[-2] != 0)
    assert_close(got, want, ["q", "k", "v", "G", "lam", "f", "w", "cP", "cF"], 1e-12)


@pytest.mark.parametrize("extras", [False, True])
def test_chunks_tm_second_derivative(extras):
    """Under create_graph=True _NativeChunks's `twice` (ops.log_linear._native_plain: the torch
    chunk form's products, `_block`, replayed over the saved inputs) gives the second
    derivative in every input, float64, against a central difference and the plain form's own
    double backward; q, k by group (two heads a group), time-major; extras: the per-step scales
    u, the skip and the pairs' levels lp (the kernel forms w) instead of w. cP and cF are
    leaves times their masks (the kernel's gradient is 0 where they are)."""
    B, H, Gq, N, C, K, V, L = 1, 2, 1, 4, 3, 2, 3, 6
    ip, (_, _, _, G, _, f, w, cP, cF) = _inputs(B, H, N, C, K, V, L, torch.float64, seed=4)
    lp = torch.tensor([min(2 + m, L - 1) for m in range(ip.shape[0])])
    mP, mF = (cP != 0).double(), (cF != 0).double()
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    q, k, v, lam = r(B, N * C, Gq, K), r(B, N * C, Gq, K), r(B, N * C, H, V), r(B, N * C, H, L)
    u, skip = r(B, N * C, H), r(H)
    inputs = [q, k, v, G, lam, f, cP, cF] + ([u, skip] if extras else [w])

    def run(fn):
        def call(q, k, v, G, lam, f, cP, cF, *x):
            u_, sk_, w_ = (x[0], x[1], None) if extras else (None, None, x[0])
            lp_ = lp if extras else None
            return fn(q, k, v, G, lam, f, w_, cP * mP, cF * mF, u_, sk_, lp_)
        return call

    native = run(lambda q, k, v, G, lam, f, w, cP, cF, u, sk, lp: native_ll.chunks_tm(
        lib, ip, q, k, v, G, lam, f, w, cP, cF, u, skip=sk, lp=lp, plain=ll._native_plain))
    plain = run(lambda q, k, v, G, lam, f, w, cP, cF, u, sk, lp: ll._native_plain(
        ip, N, False, q, k, v, u, G, lam, f, w, cP, cF, sk, None, lp))
    for a, b in zip(native(*inputs), plain(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, inputs, plain)
