"""ops.native.lattice_scan: Lattice's slot recurrence in C against the PyTorch loop
(`ops.lattice.lattice_sequential` under backend.force("torch")): outputs, final slots and
the gradients of q, k, v, beta and the initial slots (with a gradient on the final slots
too), T not a multiple of the 32-step checkpoint, 1 and 2 threads; and a NaN keeps its
place (outputs before it finite, from it on NaN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, native_vs_torch
from _second_order import second_order

from rnnzoo.ops import backend, lattice
from rnnzoo.ops.native import lattice_scan


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, lattice_scan, "lattice")


def _inputs(B, T, H, M, V, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = F.normalize(r(B, T, H, M), dim=-1), F.normalize(r(B, T, H, M), dim=-1)
    v = r(B, T, H, V)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    S0 = F.normalize(r(B, H, M, V), dim=-1)
    return q, k, v, beta, S0


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("T,H,M,V", [(37, 2, 3, 5), (70, 1, 4, 4), (1, 3, 2, 6),
                                     (35, 1, 3, 32)])  # V = 32: the C file's constant-width path
@pytest.mark.parametrize("threads", [1, 2])
def test_native_lattice_matches_loop(calls, dtype, tol, T, H, M, V, threads):
    ins = [t.requires_grad_() for t in _inputs(2, T, H, M, V, dtype)]
    gen = torch.Generator().manual_seed(1)
    wo = torch.randn(2, T, H, V, generator=gen, dtype=dtype)
    wS = torch.randn(2, H, M, V, generator=gen, dtype=dtype)

    def run():
        o, S = lattice.lattice_sequential(*ins)
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    got, want = native_vs_torch(run, threads)
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "q", "k", "v", "beta", "S0"], tol)


def test_native_lattice_output_only_gradient(calls):
    ins = [t.requires_grad_() for t in _inputs(2, 9, 2, 3, 4, torch.float64)]

    def run():
        o, _ = lattice.lattice_sequential(*ins)
        return [o, *torch.autograd.grad(o.square().sum(), ins)]

    got = run()
    with backend.force("torch"):
        want = run()
    assert calls[0] == 1
    assert_close(got, want, ["o", "q", "k", "v", "beta", "S0"], 1e-10)


def test_native_lattice_nan_keeps_its_step(calls):
    q, k, v, beta, S0 = _inputs(1, 6, 1, 2, 3, torch.float32)
    v[0, 3, 0, 1] = float("nan")
    o, S = lattice.lattice_sequential(q, k, v, beta, S0)
    assert calls[0] == 1
    assert torch.isfinite(o[:, :3]).all() and torch.isnan(o[:, 3:]).all()
    assert torch.isnan(S).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("M,V", [(20, 32), (37, 16), (1, 64)])
def test_native_lattice_whole_vector_rows(calls, dtype, tol, M, V):
    """The path where a row is whole vectors (V a multiple of the lanes): more rows than one
    transposed sum takes (a partial last group), an odd count, one row; B=1, one head."""
    ins = [t.requires_grad_() for t in _inputs(1, 41, 1, M, V, dtype, seed=2)]
    gen = torch.Generator().manual_seed(3)
    wo = torch.randn(1, 41, 1, V, generator=gen, dtype=dtype)
    wS = torch.randn(1, 1, M, V, generator=gen, dtype=dtype)

    def run():
        o, S = lattice.lattice_sequential(*ins)
        return [o, S, *torch.autograd.grad((o * wo).sum() + (S * wS).sum(), ins)]

    got = run()
    with backend.force("torch"):
        want = run()
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "q", "k", "v", "beta", "S0"], tol)


def test_native_lattice_second_derivative():
    """Under create_graph=True _NativeLattice's `twice` (lattice_step over time in PyTorch,
    replayed over the saved inputs: lattice's mode='sequential' runs this kernel) gives the
    second derivative of o and S_T in q, k, v, beta and S0, float64, against a central
    difference and the loop's own double backward."""
    lib = lattice_scan.load()
    if lib is None:
        pytest.skip("lattice_scan does not build")
    ins = [t.requires_grad_() for t in _inputs(2, 6, 2, 3, 4, torch.float64)]

    def native(*t):
        return lattice_scan.lattice(lib, *t, lattice._loop)

    for a, b in zip(native(*ins), lattice._loop(*ins)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, ins, lattice._loop)
