"""ops.native: the C selective scan against the PyTorch path of layers.mamba.selective_scan
(outputs, final state and every gradient, float64 to 1e-10 and float32 to 1e-5), the
backend decision, and the loader's cache, atomic write and warn-once fallback."""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_
from _second_order import second_order

from rnnzoo.layers.mamba import selective_scan
from rnnzoo.ops import backend, native
from rnnzoo.ops.native import selective_scan as native_ss


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls into the native scan (and so proves the native path ran)."""
    return counter(monkeypatch, native_ss, "selective_scan")


def _inputs(b, T, D, N, dtype, h0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)
    u, B, C, Dv = r(b, T, D), r(b, T, N), r(b, T, N), r(D)
    delta = torch.rand(b, T, D, generator=g, dtype=dtype) * 0.6
    A = -torch.rand(D, N, generator=g, dtype=dtype) * 3 - 0.05
    A[0, 0] = -60.0  # a tiny a_t: what rules out re-deriving h_{t-1} from h_t
    xs = [u, delta, A, B, C, Dv, r(b, D, N) if h0 else None]
    return [None if t is None else t.requires_grad_() for t in xs]


def _run(xs, neg):
    return outputs_and_grads(selective_scan(*xs, allow_neg_eigval=neg, chunk_size=4),
                             [t for t in xs if t is not None])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("b,T,D,N,h0,neg", [
    (1, 1, 3, 2, True, False), (3, 7, 20, 5, False, True), (1, 33, 40, 16, True, True),
    (3, 33, 17, 3, True, False), (2, 70, 33, 4, False, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_scan_matches_torch(calls, dtype, tol, b, T, D, N, h0, neg, threads):
    """Two threads split by batch rows (b >= 2) or by channel groups (b = 1, own dB, dC);
    T = 70 spans three checkpoint chunks, D = 17, 33 leave a partial channel block."""
    with threads_(threads):
        xs = _inputs(b, T, D, N, dtype, h0)
        got = _run(xs, neg)
        assert calls[0] == 1
        with backend.force("torch"):
            want = _run(xs, neg)
    assert calls[0] == 1
    assert_close(got, want, ["y", "h", "u", "delta", "A", "B", "C", "D", "h0"], tol)


def test_native_scan_only_where_it_should(calls, monkeypatch):
    xs = _inputs(2, 5, 4, 3, torch.float32, True)
    selective_scan(*xs, mode="sequential")
    with backend.force("torch"):
        selective_scan(*xs)
    monkeypatch.setenv("RNNZOO_NATIVE", "0")
    selective_scan(*xs)
    assert calls[0] == 0
    monkeypatch.delenv("RNNZOO_NATIVE")
    selective_scan(*xs)
    assert calls[0] == 1
    monkeypatch.setenv("RNNZOO_BACKEND", "torch")
    selective_scan(*xs)
    assert calls[0] == 1


def test_use_native_decision():
    f32, f64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert backend.use_native(f32, None, f32) and backend.use_native(f64)
    assert not backend.use_native(f32, f64)  # mixed dtypes
    assert not backend.use_native(f32.half()) and not backend.use_native(f32.bfloat16())
    assert not backend.use_native(torch.zeros(2, device="meta"))
    assert not backend.use_native() and not backend.use_native(None)
    with backend.force("torch"):
        assert not backend.use_native(f32)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache directory and no library loaded yet in this process."""
    monkeypatch.setattr(native, "_libs", {})
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A one-function source in place of the kernels' folder: the loader's own behaviour,
    without the kernels' few seconds of compiling."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "probe.c").write_text("double probe_twice(double x) { return 2 * x; }\n")
    monkeypatch.setattr(native, "_HERE", src)
    return src / "probe.c"


def test_native_build_cached_and_atomic(fresh, probe, monkeypatch):
    runs, replaced = [], []
    real_run, real_replace = native.subprocess.run, native.os.replace

    def run(cmd, *a, **kw):
        runs.append(cmd)
        return real_run(cmd, *a, **kw)

    def replace(src, dst):
        replaced.append((str(src), str(dst)))
        return real_replace(src, dst)
    monkeypatch.setattr(native.subprocess, "run", run)
    monkeypatch.setattr(native.os, "replace", replace)
    lib = native.load("probe")
    lib.probe_twice.restype, lib.probe_twice.argtypes = ctypes.c_double, [ctypes.c_double]
    assert lib.probe_twice(1.5) == 3.0
    builds = [c for c in runs if "-shared" in c]
    assert len(builds) == 1
    # compiled to a temporary file in the cache directory, then moved onto its final name
    (src, dst), = replaced
    assert os.path.dirname(src) == os.path.dirname(dst) == str(fresh) and src != dst
    assert builds[0][builds[0].index("-o") + 1] == src
    assert os.listdir(fresh) == [os.path.basename(dst)]  # no temporary left behind
    assert native.load("probe") is lib  # this process: loaded once
    monkeypatch.setattr(native, "_libs", {})  # a new process: found on disk, not rebuilt
    assert native.load("probe") is not None
    assert len([c for c in runs if "-shared" in c]) == 1
    probe.write_text(probe.read_text() + "int probe_more(void) { return 1; }\n")
    monkeypatch.setattr(native, "_libs", {})  # a changed source: a new name, built again
    assert native.load("probe").probe_more() == 1
    assert len([c for c in runs if "-shared" in c]) == 2 and len(os.listdir(fresh)) == 2


def test_native_kernels_build():
    lib = native.load("selective_scan")
    assert lib is not None and hasattr(lib, "scan_fwd_f32") and hasattr(lib, "scan_bwd_f64")


KERNEL_FILES = sorted(p.stem for p in Path(native.__file__).parent.glob("*.c"))


@pytest.mark.parametrize("name", KERNEL_FILES)
def test_every_kernel_file_builds(name):
    """Where the compiler works (selective_scan builds), every kernel file builds: the tests
    that skip a native path when its library is None then never hide a kernel that fails to
    compile."""
    if native.load("selective_scan") is None:
        pytest.skip("no working C compiler here: every op runs its PyTorch path")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: fail on it, with its message
        assert native.load(name) is not None


def test_native_fallback_when_the_compiler_fails(fresh, monkeypatch, calls):
    monkeypatch.setenv("CC", "false")
    xs = _inputs(2, 6, 5, 3, torch.float64, True)
    with pytest.warns(RuntimeWarning, match=r"cannot build selective_scan\.c \(false exited 1"):
        got = _run(xs, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        again = _run(xs, False)
    assert calls[0] == 0 and os.listdir(fresh) == []
    with backend.force("torch"):
        want = _run(xs, False)
    for x, y, w in zip(got, again, want):
        assert torch.equal(x, w) and torch.equal(y, w)


def test_native_fallback_when_no_compiler(fresh, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/rnnzoo-cc")
    with pytest.warns(RuntimeWarning, match="not runnable"):
        assert native.load("selective_scan") is None
    assert native.load("selective_scan") is None


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("lead,R,D", [((1, 1), 1, 1), ((2, 7), 3, 5), ((1, 33), 8, 40),
                                      ((3, 5), 2, 17)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_delta_softplus_matches_torch(dtype, tol, lead, R, D, threads):
    """Mamba's step sizes softplus(dt W^T + b) in C (delta_fwd / delta_bwd) against the
    PyTorch `_DeltaProj`: the output and the gradients of dt, W and b, with pre-activations
    on both sides of softplus' threshold 20 and far below 0; two threads split the rows
    (each range its own dW, db, summed after)."""
    from rnnzoo.layers.mamba import _DeltaProj
    lib = native_ss.load()
    g = torch.Generator().manual_seed(0)
    dt = (8 * torch.randn(*lead, R, generator=g, dtype=dtype)).requires_grad_()
    W = torch.randn(D, R, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(D, generator=g, dtype=dtype).requires_grad_()
    with threads_(threads):
        got = outputs_and_grads([native_ss.delta_softplus(lib, dt, W, b)], [dt, W, b])
    want = outputs_and_grads([_DeltaProj.apply(dt, W, b)], [dt, W, b])
    pre = dt.detach() @ W.detach().T + b.detach()
    if lead[1] > 5:
        assert (pre > 20).any() and (pre < -20).any()  # both ends of softplus taken
    assert_close(got, want, ["delta", "dt", "W", "b"], tol)


@pytest.mark.parametrize("neg", [False, True])
def test_native_scan_float32_decays_beyond_the_exponent_range(calls, neg):
    """float32's a_t = 2^(delta A log2 e) with the exponent clamped: steps whose delta A is
    far below float's range (a_t underflows to 0 in torch, 2^-126 in C) and a NaN in u (it
    passes through, not clamped away), against the PyTorch path."""
    xs = _inputs(2, 9, 20, 4, torch.float32, True)
    with torch.no_grad():
        xs[2][:, 0] = -400.0  # delta A log2 e down to ~ -350: below 2^-126
        xs[1][:, 3] = 0.9
    got = _run(xs, neg)
    assert calls[0] == 1
    with backend.force("torch"):
        want = _run(xs, neg)
    assert_close(got, want, ["y", "h", "u", "delta", "A", "B", "C", "D", "h0"], 1e-5)
    xs[0] = xs[0].detach().clone()
    xs[0][1, 4, 7] = float("nan")
    y, h = selective_scan(*xs, allow_neg_eigval=neg)
    assert y[1, 4:, 7].isnan().all() and not y[0].isnan().any() and h[1, 7].isnan().all()


@pytest.mark.parametrize("neg", [False, True])
def test_native_scan_float32_infinite_delta_A(calls, neg):
    """delta A far below float's exponent range, finite (-3e19: delta ~0.3 times A = -1e20)
    or -inf (1e20 * -1e20, or an A = -inf channel): exp gives a_t = 0 (2 * 0 - 1 with
    allow_neg_eigval) in torch. The C scan's 2^x reduced y = delta A log2 e unclamped: r
    took the FMA-contracted product's rounding error (2^x = inf at -3e19) or -inf + inf =
    NaN, and the outputs were inf / NaN from finite inputs."""
    xs = [t.detach() for t in _inputs(1, 6, 20, 4, torch.float32, True)]
    xs[1][0, 2, 3] = 1e20  # delta A = 1e20 * -1e20: -inf in float32
    xs[2][3, :] = -1e20
    xs[2][5, 1] = float("-inf")
    got = selective_scan(*xs, allow_neg_eigval=neg)
    assert calls[0] == 1
    want = selective_scan(*xs, allow_neg_eigval=neg, mode="sequential")
    assert torch.isfinite(want[0]).all() and torch.isfinite(want[1]).all()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _leaves2(*shapes, positive=()):
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(s, dtype=torch.float64, generator=g) + 0.2 if i in positive else
             torch.randn(s, dtype=torch.float64, generator=g)).requires_grad_()
            for i, s in enumerate(shapes)]


def test_delta_softplus_second_derivative():
    """Under create_graph=True _DeltaStep's `twice` (softplus(dt W^T + b) in PyTorch replayed
    over the saved inputs) gives the second derivative in dt, W and b, float64, against a
    central difference and the PyTorch form's own double backward; dt a transposed view."""
    lib = native_ss.load()
    if lib is None:
        pytest.skip("selective_scan does not build")
    dtt, W, b = _leaves2((2, 3, 5), (6, 3), (6,))

    def native(dtt, W, b):
        return native_ss.delta_softplus(lib, dtt.transpose(1, 2), W, b)

    def plain(dtt, W, b):
        return native_ss._torch_delta_softplus(dtt.transpose(1, 2), W, b)

    torch.testing.assert_close(native(dtt, W, b), plain(dtt, W, b), rtol=1e-12, atol=1e-12)
    second_order(native, [dtt, W, b], plain)


@pytest.mark.parametrize("neg", [False, True])
def test_scan_second_derivative(neg):
    """Under create_graph=True _NativeScan's `twice` (layers.mamba's loop replayed over the
    saved inputs, layers.mamba._loop) gives the second derivative in u, delta, A, B, C, D and
    h0, float64, against a central difference and the loop's own double backward; the same
    for the PyTorch scan node `_SelectiveScan` (chunks of 2 steps, D outside it)."""
    from rnnzoo.layers import mamba
    lib = native_ss.load()
    if lib is None:
        pytest.skip("selective_scan does not build")
    u, delta, A, B, C, Dv, h0 = (t.detach().requires_grad_()
                                 for t in _inputs(2, 5, 3, 2, torch.float64, True))
    with torch.no_grad():
        A[0, 0] = -1.5
    inputs = [u, delta, A, B, C, Dv, h0]

    def native(u, delta, A, B, C, Dv, h0):
        return native_ss.selective_scan(lib, u, delta, A, B, C, h0, Dv, allow_neg_eigval=neg,
                                        plain=mamba._loop)

    def scan(u, delta, A, B, C, Dv, h0):
        y, h = mamba._SelectiveScan.apply(u, delta, A, B, C, h0, neg, 2)
        return y + Dv * u, h

    def plain(u, delta, A, B, C, Dv, h0):
        return mamba._loop(u, delta, A, B, C, h0, Dv, neg)

    for f in (native, scan):
        for a, b in zip(f(*inputs), plain(*inputs)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        second_order(f, inputs, plain)
