"""ops.triton.scan.linear_scan against ops.scan.linear_scan, under TRITON_INTERPRET=1 on CPU,
and the backend switch (ops.backend)."""

import subprocess
import sys

import pytest
import torch

from rnnzoo.ops import backend
from rnnzoo.ops.scan import linear_scan as torch_scan

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def ts():
    from _triton_interp import interpreted
    return interpreted("rnnzoo.ops.triton.scan")


def _inputs(B, T, S, complex_, a_shape=None, h0=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a_shape = a_shape or (B, T, *S)
    a = 0.5 + 0.5 * torch.rand(a_shape, generator=g, dtype=dtype)
    b = torch.randn(B, T, *S, generator=g, dtype=dtype)
    if complex_:
        a = a * torch.exp(1j * torch.rand(a_shape, generator=g, dtype=dtype))
        b = torch.complex(b, torch.randn(B, T, *S, generator=g, dtype=dtype))
    h = None
    if h0:
        h = torch.randn(B, *S, generator=g, dtype=dtype)
        h = h.to(b.dtype)
    return a, b, h


def _compare(fn, a, b, h0, reverse, tol):
    """Forward and every gradient (through h and h_last) of fn vs the PyTorch op; max error."""
    outs = []
    for scan in (fn, torch_scan):
        xs = [x.detach().clone().requires_grad_() if x is not None else None for x in (a, b, h0)]
        h, last = scan(*xs, reverse=reverse)
        g = torch.Generator().manual_seed(1)
        w = torch.randn(h.shape, generator=g, dtype=h.real.dtype)
        loss = (h * w).real.sum() + (last * last.conj()).real.sum()
        loss.backward()
        outs.append([h, last] + [x.grad for x in xs if x is not None])
    worst = 0.0
    for x, y in zip(*outs):
        assert x.shape == y.shape and x.dtype == y.dtype
        err = ((x - y).abs().max() / (1 + y.abs().max())).item()
        worst = max(worst, err)
    assert worst < tol, worst
    return worst


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("h0", [False, True])
def test_matches_torch(ts, complex_, reverse, h0):
    a, b, h = _inputs(2, 7, (3,), complex_, h0=h0)  # T = 7: two tiles of 4, the last ragged
    _compare(ts.linear_scan, a, b, h, reverse, 1e-5)


@pytest.mark.parametrize("T", [1, 5])
def test_short_and_ragged(ts, T):
    a, b, h = _inputs(1, T, (2, 3), False, h0=True)  # trailing shape (2, 3)
    _compare(ts.linear_scan, a, b, h, False, 1e-5)


@pytest.mark.parametrize("a_shape", [(1, 1, 2, 3), (2, 1, 2, 3), (1, 6, 2, 3), (2, 6, 1, 3)])
def test_broadcast_a(ts, a_shape):
    a, b, h = _inputs(2, 6, (2, 3), False, a_shape=a_shape, h0=True)
    _compare(ts.linear_scan, a, b, h, True, 1e-5)


def test_real_a_complex_b(ts):
    _, b, h = _inputs(2, 5, (3,), True, h0=True)
    a, _, _ = _inputs(2, 5, (3,), False)
    _compare(ts.linear_scan, a, b, h, False, 1e-5)


@pytest.mark.parametrize("complex_", [False, True])
def test_segmented_path(ts, complex_, monkeypatch):
    """Long-T path: segments scanned in parallel, linked by a scan over segment ends."""
    monkeypatch.setattr(ts, "_CONFIG_OVERRIDE", (2, 2, 3))  # tiles of 2, 3 segments
    a, b, h = _inputs(1, 9, (2,), complex_, h0=True)
    _compare(ts.linear_scan, a, b, h, complex_, 1e-5)


def test_float64(ts):
    a, b, h = _inputs(2, 6, (3,), False, h0=True, dtype=torch.float64)
    assert _compare(ts.linear_scan, a, b, h, False, 1e-12) < 1e-12


def test_same_errors(ts):
    for args in [(torch.rand(2, 3, 4), torch.rand(2, 3)),
                 (torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.rand(2, 5)),
                 (torch.rand(2, 3, 4), torch.rand(2, 3, 4).double())]:
        with pytest.raises((ValueError, TypeError)) as ours:
            ts.linear_scan(*args)
        with pytest.raises((ValueError, TypeError)) as ref:
            torch_scan(*args)
        assert type(ours.value) is type(ref.value) and str(ours.value) == str(ref.value)


class _OnCuda:
    is_cuda = True


def test_backend_switch(monkeypatch):
    monkeypatch.delenv("RNNZOO_BACKEND", raising=False)
    cpu = torch.zeros(1)
    assert not backend.use_triton(cpu)
    assert not backend.use_triton(_OnCuda(), cpu)
    assert backend.use_triton(_OnCuda(), None) == backend.triton_available()
    monkeypatch.setenv("RNNZOO_BACKEND", "torch")
    assert not backend.use_triton(_OnCuda())
    with backend.force("triton"):  # force beats the environment, and any device
        assert backend.use_triton(cpu)
        with backend.force("torch"):
            assert not backend.use_triton(_OnCuda())
        assert backend.use_triton(cpu)
    monkeypatch.delenv("RNNZOO_BACKEND")
    with backend.force("torch"):
        assert not backend.use_triton(_OnCuda())
    with pytest.raises(ValueError, match="backend"):
        with backend.force("cuda"):
            pass


def test_rnnzoo_import_does_not_import_triton():
    code = ("import sys, rnnzoo, rnnzoo.ops.backend, rnnzoo.ops.triton; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
