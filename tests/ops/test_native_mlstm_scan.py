"""ops.native.mlstm_scan and ops.native.blockdiag (mlstm's C kernels).

mlstm_scan: the chunk entry `ops.chunk.linear.mlstm`, which runs the C recurrence on the CPU,
against the reference loop `mlstm_recurrent` under autograd: outputs, the final (C, n, m) and
the gradients of q, k, v, both gates and the initial (C, n, m), with gradients arriving on
every output (the state's m included: the backward carries the max-stabiliser exactly), T not
a multiple of the 32-step checkpoint, 1 and 2 threads. blockdiag: the block-diagonal map
against its PyTorch path, x a strided split of a wider tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, native_vs_torch
from _native_check import threads as threads_

from rnnzoo.layers.mlstm import BlockDiagonalLinear
from rnnzoo.ops.chunk.linear import mlstm, mlstm_recurrent
from rnnzoo.ops.native import blockdiag, mlstm_scan


@pytest.fixture
def calls(monkeypatch):
    return {"mlstm": counter(monkeypatch, mlstm_scan, "mlstm"),
            "blockdiag": counter(monkeypatch, blockdiag, "blockdiag")}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("T,threads", [(37, 1), (70, 2), (1, 1)])
@pytest.mark.parametrize("K,V", [(5, 6), (19, 40)])  # one padded tile; whole and padded tiles
def test_native_mlstm_matches_the_loop(calls, dtype, tol, T, threads, K, V):
    gen = torch.Generator().manual_seed(0)
    B, H = 3, 2
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    li, lf = 2 * r(B, T, H), F.logsigmoid(r(B, T, H) + 1)
    C0, n0, m0 = r(B, H, K, V), r(B, H, K), r(B, H)
    ins = [t.requires_grad_() for t in (q, k, v, li, lf, C0, n0, m0)]
    ws = [r(B, T, H, V), r(B, H, K, V), r(B, H, K), r(B, H)]

    def run(f):
        h, state = f(q, k, v, li, lf, initial_state=(C0, n0, m0))
        outs = [h, *state]
        loss = sum((o * w).sum() for o, w in zip(outs, ws))
        return outs + list(torch.autograd.grad(loss, ins))

    with threads_(threads):
        got = run(mlstm)
    assert calls["mlstm"][0] == 1
    want = run(mlstm_recurrent)
    assert_close(got, want, ["h", "C", "n", "m", "q", "k", "v", "li", "lf", "C0", "n0", "m0"], tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("bs,threads", [(4, 1), (2, 2), (3, 1)])
def test_native_blockdiag_matches_torch(calls, dtype, tol, bs, threads):
    torch.manual_seed(0)
    m = BlockDiagonalLinear(12, bs).to(dtype)
    wide = torch.randn(3, 7, 24, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 7, 12, dtype=dtype)

    def run():
        y = m(wide[..., 12:])  # a strided view, as mlstm's x_m
        return [y, *torch.autograd.grad((y * g).sum(), [wide, m.weight])]

    got, want = native_vs_torch(run, threads)
    assert calls["blockdiag"][0] == 1
    assert_close(got, want, ["y", "x", "weight"], tol)


def _gated_reference(x, W0, W1, G):
    """(x BD0^T, x BD1^T, x G^T) in PyTorch: the blocks as a batched product."""
    def bd(W):
        xb = x.unflatten(-1, (W.shape[0], W.shape[-1]))
        return torch.einsum("...bi,boi->...bo", xb, W).flatten(-2)
    return bd(W0), None if W1 is None else bd(W1), x @ G.T


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("dim,bs,ng,two,threads", [
    (256, 4, 8, True, 1),  # mlstm's shape: whole vectors, the eight-row gate path
    (36, 4, 11, True, 2),  # a column tail past the vectors, eight rows and three after
    (12, 3, 3, False, 1),  # one map, fewer than eight gate rows, a bs without its own body
    (40, 2, 16, False, 2),
])
def test_native_blockdiag_gated_matches_torch(dtype, tol, dim, bs, ng, two, threads):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    wide = r(3, 7, 2 * dim).requires_grad_()
    W0, G = r(dim // bs, bs, bs).requires_grad_(), r(ng, dim).requires_grad_()
    W1 = r(dim // bs, bs, bs).requires_grad_() if two else None
    ws = [r(3, 7, dim), r(3, 7, dim), r(3, 7, ng)]
    ins = [wide, W0, G] + ([W1] if two else [])

    def run(f):
        outs = f(wide[..., dim:], W0, W1, G)  # x a strided view, as mlstm's split halves
        loss = sum((o * w).sum() for o, w in zip(outs, ws) if o is not None)
        return [o for o in outs if o is not None] + list(torch.autograd.grad(loss, ins))

    lib = blockdiag.load()
    with threads_(threads):
        got = run(lambda *a: blockdiag.blockdiag_gated(lib, *a))
    want = run(_gated_reference)
    names = ["y0"] + (["y1"] if two else []) + ["g", "x", "W0", "G"] + (["W1"] if two else [])
    assert_close(got, want, names, tol)


def test_native_blockdiag_gated_unused_outputs():
    """Outputs that get no gradient (k unused, the gates unused) count as zeros."""
    gen = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, W0, W1, G = (r(*s).requires_grad_() for s in ((5, 24), (6, 4, 4), (6, 4, 4), (8, 24)))
    w = r(5, 24)
    lib = blockdiag.load()
    got = torch.autograd.grad((blockdiag.blockdiag_gated(lib, x, W0, W1, G)[0] * w).sum(),
                              [x, W0, W1, G], allow_unused=True)
    want = torch.autograd.grad((_gated_reference(x, W0, W1, G)[0] * w).sum(), [x, W0],
                               allow_unused=True)
    assert_close(got[:2], want, ["x", "W0"], 1e-12)
    assert got[2] is None or not got[2].abs().max()
    assert got[3] is None or not got[3].abs().max()


@pytest.mark.parametrize("two,threads", [(True, 1), (False, 2), (True, 2)])
def test_native_blockdiag_gated_total(two, threads):
    """total=True's fourth output is the sum of the three outputs' entries (each thread's rows
    summed in the kernel), and not finite once one input entry is NaN or inf."""
    gen = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, W0, W1, G = r(3, 7, 20), r(5, 4, 4), r(5, 4, 4), r(9, 20)
    lib = blockdiag.load()
    with threads_(threads):
        y0, y1, g, total = blockdiag.blockdiag_gated(lib, x, W0, W1 if two else None, G,
                                                     total=True)
        want = y0.sum() + (y1.sum() if two else 0) + g.sum()
        assert total.shape == () and abs(float(total - want)) < 1e-10 * float(y0.abs().sum())
        for bad in (float("nan"), float("inf"), float("-inf")):
            xb = x.clone()
            xb[2, 6, 19] = bad
            assert not torch.isfinite(blockdiag.blockdiag_gated(lib, xb, W0, W1, G, total=True)[3])


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")])
def test_mlstm_layer_finite_check_from_the_kernels(monkeypatch, bad):
    """The layer passes finite=True to linear.mlstm when blockdiag_gated's sums are finite
    (the C path then skips clean_inputs' sums over q, k, v) and not otherwise (clean_inputs
    runs and marks); either way the output equals the PyTorch path's (NaN where it is)."""
    from rnnzoo import create
    from rnnzoo.ops import backend
    from rnnzoo.ops.chunk import linear

    calls = counter(monkeypatch, linear, "clean_inputs")
    torch.manual_seed(0)
    layer = create("mlstm", d_model=16, num_heads=2).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    if bad is not None:
        x[0, 5, 3] = bad
    got = layer(x, mode="chunk")[0]
    assert calls[0] == (0 if bad is None else 1)
    with backend.force("torch"):
        want = layer(x, mode="chunk")[0]
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert (got[ok] - want[ok]).abs().max() < 1e-10
