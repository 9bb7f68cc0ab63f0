"""ops.native.ssd_scan: Mamba-2's SSD as a C recurrence against the chunked PyTorch form
(`_ScalarChunk`, under backend.force("torch")): outputs, final state and the gradients of q,
k, v, the log-decays and the initial state (with a gradient on the final state too), groups
of heads sharing q and k, odd T (37, 70, 1), 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, native_vs_torch
from _second_order import second_order

from rnnzoo.ops.chunk import linear
from rnnzoo.ops.native import ssd_scan


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, ssd_scan, "ssd")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("T,G,H", [(37, 2, 4), (70, 1, 3), (1, 1, 1)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("K,V", [(5, 6), (19, 21), (16, 40)])
def test_native_ssd_matches_chunked(calls, dtype, tol, T, G, H, threads, K, V):
    """K, V: a state narrower than a tile and its vector blocks; a padded last tile with a
    block of rows and a remainder; whole tiles and whole blocks."""
    gen = torch.Generator().manual_seed(0)
    B = 3
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v, S0 = r(B, T, G, K), r(B, T, G, K), r(B, T, H, V), r(B, H, K, V)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype)
    ins = [t.requires_grad_() for t in (q, k, v, g, S0)]
    wo, wS = r(B, T, H, V), r(B, H, K, V)

    def run():
        o, S = linear.ssd(q, k, v, g, scale=0.7, initial_state=S0, chunk_size=8)
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    got, want = native_vs_torch(run, threads)
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "q", "k", "v", "g", "S0"], tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_ssd_scaled_tile_span(calls, dtype, tol, grad, threads):
    """ssd_fwd's tile holds S e^(-D), made exact where D would pass -SSD_SPAN (20): steps of
    -60 (e^120 overflows float: a tile scaled past them is inf), a run of small decays whose sum
    passes the span between stored chunk starts (T = 150, no gradient: no chunk starts at all),
    decays of exactly 0; outputs, final state and (grad) every gradient against the chunked
    PyTorch form."""
    gen = torch.Generator().manual_seed(1)
    B, T, G, H, K, V = 2, 150, 1, 2, 19, 40
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v, S0 = r(B, T, G, K), r(B, T, G, K), r(B, T, H, V), r(B, H, K, V)
    g = -0.4 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    g[:, 10] = -60.0
    g[1, 11:14] = -60.0
    g[:, 40:50] = 0.0
    g[0, 100, 1] = -25.0
    g[:, 32] = -25.0  # on stored chunk starts (ssd_scan.CHUNK = 32): a_t after the store
    g[1, 64] = -20.5
    ins = [q, k, v, g, S0]
    if grad:
        ins = [t.requires_grad_() for t in ins]
    wo, wS = r(B, T, H, V), r(B, H, K, V)

    def run():
        o, S = linear.ssd(q, k, v, g, scale=0.7, initial_state=S0, chunk_size=8)
        if not grad:
            return [o, S]
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    got, want = native_vs_torch(run, threads)
    assert calls[0] == 1
    assert all(t.isfinite().all() for t in got)
    assert_close(got, want, ["o", "S", "q", "k", "v", "g", "S0"][:len(got)], tol)


@pytest.mark.parametrize("diag", [False, True])
def test_ssd_second_derivative(diag):
    """Under create_graph=True _NativeSSD's `twice` (the reference loop replayed over the saved
    inputs, ops.chunk.linear._ssd_loop) gives the second derivative in q, k, v, g, S0 (and
    mamba3's same-step d), two heads sharing q and k, float64, against a central difference
    and the loop's own double backward."""
    lib = ssd_scan.load()
    if lib is None:
        pytest.skip("ssd_scan does not build")
    gen = torch.Generator().manual_seed(2)
    B, T, G, H, K, V = 2, 5, 1, 2, 3, 2
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    ins = [r(B, T, G, K), r(B, T, G, K), r(B, T, H, V), -torch.rand(B, T, H, generator=gen,
                                                                     dtype=torch.float64),
           r(B, H, K, V)] + ([r(B, T, H)] if diag else [])
    ins = [t.requires_grad_() for t in ins]

    def native(*t):
        return ssd_scan.ssd(lib, *t, *([] if diag else [None]), linear._ssd_loop)

    def plain(*t):
        return linear._ssd_loop(*t, *([] if diag else [None]))

    for a, b in zip(native(*ins), plain(*ins)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, ins, plain)


def test_without_a_plain_form_create_graph_raises():
    """A C node called without its plain form (ssd_scan.ssd, gla_scan.gla: plain None)
    raises the documented error under create_graph=True, and its first-order gradient is
    unchanged."""
    from rnnzoo.ops.native import gla_scan
    lib, glib = ssd_scan.load(), gla_scan.load()
    if lib is None or glib is None:
        pytest.skip("ssd_scan or gla_scan does not build")
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k, v, S0 = (t.requires_grad_() for t in (r(1, 4, 1, 2), r(1, 4, 1, 2), r(1, 4, 1, 3),
                                                   r(1, 1, 2, 3)))
    g = -torch.rand(1, 4, 1, generator=gen, dtype=torch.float64)
    for o in (ssd_scan.ssd(lib, q, k, v, g, S0)[0],
              gla_scan.gla(glib, q, k, v, g[..., None].expand(1, 4, 1, 2), S0, plain=None)[0]):
        with pytest.raises(RuntimeError, match="first order only: create_graph=True through it "
                                               "is not supported"):
            torch.autograd.grad(o.sum(), q, create_graph=True)
    want = torch.autograd.grad(linear._ssd_loop(q, k, v, g, S0, None)[0].sum(), q)[0]
    got = torch.autograd.grad(ssd_scan.ssd(lib, q, k, v, g, S0)[0].sum(), q)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
