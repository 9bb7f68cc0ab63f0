"""ops.native.ssd_scan's backward by chunks (ssd_chunk.c: ssd_bwd_chunk, from the chunk start
states ssd_fwd stores) against the chunked PyTorch form (`_ScalarChunk`, under
backend.force("torch")): outputs, final state and the gradients of q, k, v, the log-decays
and the initial state, at chunk lengths that split T into whole chunks, a short last chunk, one
partial chunk, and chunks wider than a causal tile (SSD_TR = 16 rows: 40 is two whole tiles
and a part); mamba3's K = 128, V = 64; heads sharing q and k; with and without a gradient on
the final state; 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, native_vs_torch

from rnnzoo.ops import backend
from rnnzoo.ops.chunk import linear
from rnnzoo.ops.native import ssd_scan

pytestmark = pytest.mark.skipif(ssd_scan.load() is None,
                                reason="no C compiler: the PyTorch path only")


def _case(dtype, B, T, G, H, K, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v, S0 = r(B, T, G, K), r(B, T, G, K), r(B, T, H, V), r(B, H, K, V)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v, g, S0)], r(B, T, H, V), r(B, H, K, V)


def _run(ins, wo, wS):
    q, k, v, g, S0 = ins
    o, S = linear.ssd(q, k, v, g, scale=0.6, initial_state=S0, chunk_size=8)
    loss = (o * wo).sum() + (0 if wS is None else (S * wS).sum())
    return [o, S, *torch.autograd.grad(loss, ins)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("L,T", [(8, 32), (8, 37), (40, 37), (40, 101), (32, 64), (5, 1)])
@pytest.mark.parametrize("G,H,K,V", [(2, 4, 19, 21), (1, 3, 128, 64), (1, 1, 16, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_backward_matches_torch(monkeypatch, dtype, tol, L, T, G, H, K, V, threads):
    monkeypatch.setattr(ssd_scan, "CHUNK", L)
    calls = counter(monkeypatch, ssd_scan, "ssd")
    ins, wo, wS = _case(dtype, 2, T, G, H, K, V)
    got, want = native_vs_torch(lambda: _run(ins, wo, wS), threads)
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "q", "k", "v", "g", "S0"], tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_no_gradient_on_final_state(monkeypatch, dtype, tol):
    """dS_T absent (NULL): the chunks start from a zero state gradient."""
    monkeypatch.setattr(ssd_scan, "CHUNK", 16)
    ins, wo, _ = _case(dtype, 3, 50, 1, 2, 24, 32, seed=3)
    got = _run(ins, wo, None)
    with backend.force("torch"):
        want = _run(ins, wo, None)
    assert_close(got, want, ["o", "S", "q", "k", "v", "g", "S0"], tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_gradient_on_final_state_only(monkeypatch, dtype, tol):
    """The outputs unread (their gradient None: the node does not materialise zeros for an
    unread output; the backward runs on zeros for them): the gradients through S_T alone."""
    monkeypatch.setattr(ssd_scan, "CHUNK", 16)
    ins, _, wS = _case(dtype, 2, 50, 1, 2, 24, 32, seed=4)

    def run():
        q, k, v, g, S0 = ins
        _, S = linear.ssd(q, k, v, g, scale=0.6, initial_state=S0, chunk_size=8)
        return [S, *torch.autograd.grad((S * wS).sum(), ins)]

    got = run()
    with backend.force("torch"):
        want = run()
    assert_close(got, want, ["S", "q", "k", "v", "g", "S0"], tol)


def test_no_chunk_states_without_gradients():
    """Under no_grad the forward stores no chunk states and gives the same output."""
    ins, _, _ = _case(torch.float64, 2, 45, 1, 2, 8, 8)
    lib = ssd_scan.load()
    with torch.no_grad():
        o0, S0 = ssd_scan.ssd(lib, *ins)
    o1, S1 = ssd_scan.ssd(lib, *ins)
    assert torch.equal(o0, o1) and torch.equal(S0, S1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("L,T,G,H,K,V", [(8, 37, 2, 4, 19, 21), (32, 70, 4, 4, 128, 64),
                                         (40, 45, 1, 1, 16, 40), (5, 1, 1, 2, 8, 8)])
@pytest.mark.parametrize("threads", [1, 2])
def test_diag_term(monkeypatch, dtype, tol, L, T, G, H, K, V, threads):
    """o_t += d_t v_t (mamba3's same-step correction) in the kernels against the PyTorch path's
    addcmul: o, S and every gradient, d's included."""
    monkeypatch.setattr(ssd_scan, "CHUNK", L)
    calls = counter(monkeypatch, ssd_scan, "ssd")
    ins, wo, wS = _case(dtype, 2, T, G, H, K, V, seed=5)
    d = torch.randn(2, T, H, generator=torch.Generator().manual_seed(6), dtype=dtype)
    ins.append(d.requires_grad_())

    def run():
        q, k, v, g, S0, d = ins
        o, S = linear.ssd(q, k, v, g, scale=0.6, initial_state=S0, chunk_size=8, diag=d)
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    got, want = native_vs_torch(run, threads)
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "q", "k", "v", "g", "S0", "d"], tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,T,G,H,K,V,width,at", [(2, 37, 2, 4, 19, 21, 90, 3),
                                                  (3, 70, 4, 4, 32, 32, 140, 5),
                                                  (2, 1, 1, 1, 16, 40, 41, 1)])
def test_v_read_in_place(monkeypatch, dtype, B, T, G, H, K, V, width, at):
    """v a slice of wider (B, T) rows (mamba3's x from in_proj's output) is read in place by
    both kernels (the `contiguous` it would take is not called on it): every output and
    gradient equal, bit for bit, to the contiguous v's, and to the PyTorch path's."""
    monkeypatch.setattr(ssd_scan, "CHUNK", 16)
    (q, k, _, g, S0), wo, wS = _case(dtype, B, T, G, H, K, V, seed=5)
    rows = torch.randn(B, T, width, generator=torch.Generator().manual_seed(6), dtype=dtype)
    v = rows[..., at:at + H * V].unflatten(-1, (H, V)).requires_grad_()
    assert not v.is_contiguous() and ssd_scan._rows(v) == width
    copies = []
    real = torch.Tensor.contiguous
    monkeypatch.setattr(torch.Tensor, "contiguous",
                        lambda t, *a, **kw: (copies.append(t.data_ptr() == v.data_ptr())
                                             or real(t, *a, **kw)))
    got = _run([q, k, v, g, S0], wo, wS)
    assert not any(copies)
    monkeypatch.setattr(torch.Tensor, "contiguous", real)
    dense = real(v.detach()).requires_grad_()
    want = _run([q, k, dense, g, S0], wo, wS)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    with backend.force("torch"):
        ref = _run([q, k, dense, g, S0], wo, wS)
    assert_close(got, ref, ["o", "S", "q", "k", "v", "g", "S0"], 1e-10 if dtype == torch.float64
                 else 2e-5)
