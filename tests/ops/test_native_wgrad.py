"""ops.native.wgrad: the weight gradient g^T r in C (wgrad.c) equals the float64 product
(float64 build tight, float32 loose), over odd shapes: N not a multiple of the row block
(64) and N = 1, G not a multiple of the 8-row tile and G = 1, K with a tail past the last
vector (scalar columns), K narrower than a vector, at 1 and 2 threads; and linear.weight_grad
takes it in float32 for K or G a multiple of 16 (both orientations, not K >= 256 with G < 64)
on AVX-512 and never on AVX2 (torch's matmul there), and equals g^T r either way; with the
bias's gradient (g's column sums) through linear's backward."""

from __future__ import annotations

import pytest
import torch
from _native_check import counter, threads

from rnnzoo.ops import native
from rnnzoo.ops.native import linear as native_linear
from rnnzoo.ops.native import wgrad

pytestmark = pytest.mark.skipif(native.load("wgrad") is None, reason="no C compiler")


@pytest.mark.parametrize("N, G, K", [(200, 13, 37), (1, 1, 16), (64, 8, 32), (130, 20, 5),
                                     (67, 33, 128), (9, 17, 48)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_wgrad_is_g_transposed_times_r(N, G, K, dtype, n_threads):
    gen = torch.Generator().manual_seed(N * 1000 + G * 10 + K)
    g = torch.randn(N, G, generator=gen, dtype=dtype)
    r = torch.randn(N, K, generator=gen, dtype=dtype)
    with threads(n_threads):
        got = wgrad.weight_grad(g, r)
        got_b, db = wgrad.weight_grad(g, r, bias=True)
    want = g.double().T @ r.double()
    assert got.shape == (G, K) and got.dtype == dtype and db.shape == (G,)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * N ** 0.5)
    assert torch.equal(got_b, got)
    torch.testing.assert_close(db.double(), g.double().sum(0), rtol=tol, atol=tol * N ** 0.5)


@pytest.mark.parametrize("out, inp", [(20, 32), (48, 9), (5, 16)])
def test_linear_bias_grad_through_wgrad(monkeypatch, out, inp):
    """linear's backward: the weight (and, where wgrad.c takes K = in, the bias) gradient
    from wgrad.c (AVX-512; torch's matmul on AVX2, oneDNN elsewhere) equal F.linear's."""
    calls = counter(monkeypatch, wgrad, "weight_grad")
    gen = torch.Generator().manual_seed(out + inp)
    x = torch.randn(3, 70, inp, generator=gen, requires_grad=True)
    w = torch.randn(out, inp, generator=gen, requires_grad=True)
    b = torch.randn(out, generator=gen, requires_grad=True)
    dy = torch.randn(3, 70, out, generator=gen)
    got = torch.autograd.grad(native_linear.linear(x, w, b), (x, w, b), dy)
    want = torch.autograd.grad(torch.nn.functional.linear(x, w, b), (x, w, b), dy)
    assert calls[0] == (1 if native_linear._AVX512 else 0)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("G, K, taken", [(24, 32, 1), (32, 7, 1), (8, 128, 1), (8, 256, 0),
                                         (7, 9, 0), (896, 128, 1), (644, 128, 1),
                                         (128, 512, 1), (1040, 128, 1), (48, 256, 0),
                                         (128, 256, 1)])
def test_weight_grad_takes_wgrad(monkeypatch, G, K, taken):
    """On AVX-512 wgrad.c where K (or G) is a multiple of 16, not for K >= 256 with G < 64
    (oneDNN) (taken); on AVX2 torch's matmul (`mm` on g's transposed view) at every shape;
    elsewhere oneDNN's product; the same gradient either way."""
    taken = taken if native_linear._AVX512 else 0
    calls = counter(monkeypatch, wgrad, "weight_grad")
    onednn = counter(monkeypatch, native_linear, "_mm")
    gen = torch.Generator().manual_seed(G + K)
    g, r = torch.randn(2, 75, G, generator=gen), torch.randn(2, 75, K, generator=gen)
    with torch.no_grad():
        got = native_linear.weight_grad(g, r)
    assert calls[0] == taken
    assert onednn[0] == (0 if taken or native_linear._AVX2 or native_linear._LP is None else 1)
    want = g.double().flatten(0, 1).T @ r.double().flatten(0, 1)
    assert got.shape == (G, K)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_linear_strided_bias():
    """linear's forward takes the bias into oneDNN's product: a strided bias (a view) gives
    F.linear's output and gradients."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 33, 32, generator=gen, requires_grad=True)
    w = torch.randn(24, 32, generator=gen, requires_grad=True)
    b_full = torch.randn(48, generator=gen, requires_grad=True)
    dy = torch.randn(2, 33, 24, generator=gen)
    outs = []
    for f in (native_linear.linear, torch.nn.functional.linear):
        y = f(x, w, b_full[::2])
        outs.append((y, *torch.autograd.grad(y, (x, w, b_full), dy)))
    for a, e in zip(*outs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)
