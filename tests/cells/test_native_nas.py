"""nas' C loop with its projection inside the autograd node (ops.native.cells.scan_projected)
and the products it takes in C (the weight gradients by linear.weight_grad: wgrad.c's kernel
in float32, tested here in both dtypes at nas' shapes; the projection x w_in^T and d x inside
the loop's steps on cell_loop.h's packed tiles), against the Python hand-written backward (RNNZOO_NATIVE=0) and the reference loop:
outputs, final states and the gradients of x, the initial state, W_ih, W_hh and the biases,
float64 to 1e-10 and float32 close, at 1 and 2 threads; widths whose rows are whole cache
lines (the streamed saved gates and d xp) and widths that are not; B = 1, T = 1; inputs or
weights that need no gradient; no-grad runs."""

from __future__ import annotations

import copy

import pytest
import torch
from _cells import perturbed

from rnnzoo.ops import native
from rnnzoo.ops.native import cells as native_cells
from rnnzoo.ops.native import wgrad


@pytest.fixture
def projected(monkeypatch):
    """the `proj` flags of the C loop's calls"""
    n = []
    real = native_cells._NativeLoop.apply
    monkeypatch.setattr(native_cells._NativeLoop, "apply",
                        lambda *a: n.append(a[6]) or real(*a))
    return n


def _wgrad(g, r, threads):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert native.load("wgrad") is not None  # the kernel, not the g^T r fallback
        return wgrad.weight_grad(g, r)
    finally:
        torch.set_num_threads(old)


# (N, G, K): N past and short of the 64-row blocks, G past the 8- (4-) row tiles, K with
# two-vector, one-vector and scalar column tails in both builds
@pytest.mark.parametrize("N,G,K", [(1, 1, 1), (5, 3, 7), (130, 37, 19), (64, 16, 48),
                                   (200, 80, 133), (67, 1024, 128)])
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_grad_equals_gT_r(N, G, K, threads):
    gen = torch.Generator().manual_seed(N + G + K)
    g = torch.randn(N, G, generator=gen, dtype=torch.float64)
    r = torch.randn(N, K, generator=gen, dtype=torch.float64)
    want = g.T @ r
    got = _wgrad(g, r, threads)
    assert (got - want).abs().max().item() <= 1e-12 * (1 + want.abs().max().item())
    got32 = _wgrad(g.float(), r.float(), threads)
    assert (got32.double() - want).abs().max().item() <= 1e-5 * (1 + want.abs().max().item())


def _run(cell, x, s0, native_on, monkeypatch, grads=("x", "s", "p")):
    monkeypatch.setenv("RNNZOO_NATIVE", "1" if native_on else "0")
    x = x.clone().requires_grad_("x" in grads)
    s0 = tuple(s.clone().requires_grad_("s" in grads) for s in s0)
    params = list(cell.parameters())
    for p in params:
        p.requires_grad_("p" in grads)
    y, s = cell(x, s0, fused=True)
    gen = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum()
               for t in (y, *s))
    wrt = [t for t in [x, *s0, *params] if t.requires_grad]
    for p in params:
        p.requires_grad_(True)
    return [y, *s, *torch.autograd.grad(loss, wrt)]


def _close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert (g - w).abs().max().item() <= tol * (1 + w.abs().max().item())


# (B, T, D, H): H = 16 (rows of whole cache lines in both dtypes: the streamed stores),
# 21 (neither), B = 1, T = 1
SIZES = [(3, 5, 7, 16), (5, 3, 3, 21), (1, 4, 5, 16), (2, 1, 16, 8)]


@pytest.mark.parametrize("B,T,D,H", SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_nas_projected_equals_manual_and_reference(B, T, D, H, bias, projected, monkeypatch):
    cell = perturbed("nas", input_size=D, hidden_size=H, bias=bias)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    s0 = tuple(torch.randn(B, H, generator=gen, dtype=torch.float64) for _ in range(2))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        got = _run(cell, x, s0, True, monkeypatch)
        assert projected == [True], "the fused mode did not run the projected C loop"
        manual = _run(cell, x, s0, False, monkeypatch)
        monkeypatch.setenv("RNNZOO_NATIVE", "1")
        xs = [x.clone().requires_grad_()] + [s.clone().requires_grad_() for s in s0]
        y, s = cell(xs[0], tuple(xs[1:]), fused=False)
        gen = torch.Generator().manual_seed(7)
        loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
                   for t in (y, *s))
        ref = [y, *s, *torch.autograd.grad(loss, xs + list(cell.parameters()))]
        torch.set_num_threads(2)
        two = _run(cell, x, s0, True, monkeypatch)
    finally:
        torch.set_num_threads(old)
    assert projected == [True, True]
    _close(got, manual, 1e-10)
    _close(got, ref, 1e-10)
    _close(two, got, 1e-13)
    # float32: against the float64 result
    cell32 = copy.deepcopy(cell).float()
    got32 = _run(cell32, x.float(), tuple(s.float() for s in s0), True, monkeypatch)
    _close([t.double() for t in got32], got, 1e-4)


@pytest.mark.parametrize("grads", [("x",), ("p",), ("s",), ("x", "s")])
def test_nas_projected_partial_gradients(grads, projected, monkeypatch):
    cell = perturbed("nas", input_size=5, hidden_size=16)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    s0 = tuple(torch.randn(3, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    got = _run(cell, x, s0, True, monkeypatch, grads)
    want = _run(cell, x, s0, False, monkeypatch, grads)
    assert projected == [True]
    _close(got, want, 1e-10)


def test_nas_projected_no_grad_and_fallback(projected, monkeypatch):
    cell = perturbed("nas", input_size=5, hidden_size=16, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 7, 5, generator=gen)
    s0 = tuple(torch.randn(4, 16, generator=gen) for _ in range(2))
    monkeypatch.setenv("RNNZOO_NATIVE", "1")
    with torch.no_grad():  # nothing kept per step
        y, s = cell(x, s0, fused=True)
    assert projected == [True]
    monkeypatch.setenv("RNNZOO_NATIVE", "0")
    with torch.no_grad():
        y0, s_0 = cell(x, s0, fused=True)
    assert projected == [True]  # the Python loop, not the C one
    _close([y, *s], [y0, *s_0], 1e-5)
    empty = cell(x[:0], tuple(t[:0] for t in s0), fused=True)[0]  # B = 0: the other loop
    assert empty.shape == (0, 7, 16)
