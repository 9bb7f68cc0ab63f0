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
from _second_order import second_order

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


def _qk_reference(x, Wq, Wk, G, gm, v, state, exp_gate):
    """mlstm_scan.qk_gates in PyTorch: q, k, the gates through _gated_reference, log sigmoid
    (or the exp gate's identity) and the reference loop; x passed through as the third output."""
    B, T, _ = x.shape
    H, K = state[1].shape[1:]
    q, k, gc = _gated_reference(x, Wq, Wk, G)
    li, f = (gc + gm).chunk(2, -1)
    lf = f if exp_gate else F.logsigmoid(f)
    h, st = mlstm_recurrent(q.view(B, T, H, K), k.view(B, T, H, K), v, li, lf, scale=1.0,
                            initial_state=state)
    return h, st, x


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 5e-5)])
@pytest.mark.parametrize("B,T,H,K,bs,exp_gate,threads", [
    (3, 37, 2, 16, 4, False, 2),  # whole vectors (bs = 4), T past two 16-step blocks
    (2, 33, 1, 24, 4, True, 1),  # one head, a column tail past the vectors, the exp gate
    (1, 5, 3, 6, 3, False, 1),  # B = 1, a bs without its own body, inside one block
    (2, 1, 2, 8, 2, False, 2),  # T = 1
])
def test_mlstm_qk_gates_matches_torch(dtype, tol, B, T, H, K, bs, exp_gate, threads):
    """mlstm_qk_fwd / _bwd (q, k and the gates from x fused with the gates pass, then the
    SSD) against PyTorch: h, the final (C, n, m), x passed through, and the gradients of x
    (the pass-through's included), Wq, Wk, G, gm, v and the initial state."""
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    dim, V = H * K, K + 3
    x, Wq, Wk = r(B, T, dim), r(dim // bs, bs, bs) * 0.5, r(dim // bs, bs, bs) * 0.5
    G, gm, v = r(2 * H, dim) * 0.3, r(B, T, 2 * H) + 1, r(B, T, H, V)
    C0, n0, m0 = r(B, H, K, V), r(B, H, K), r(B, H)
    ins = [t.requires_grad_() for t in (x, Wq, Wk, G, gm, v, C0, n0, m0)]
    ws = [r(B, T, H, V), r(B, H, K, V), r(B, H, K), r(B, H), r(B, T, dim)]
    lib = mlstm_scan.load()

    def run(f):
        h, state, xt = f(x, Wq, Wk, G, gm, v, (C0, n0, m0), exp_gate)
        outs = [h, *state, xt]
        loss = sum((o * w).sum() for o, w in zip(outs, ws))
        return outs + list(torch.autograd.grad(loss, ins))

    with threads_(threads):
        got = run(lambda *a: mlstm_scan.qk_gates(lib, *a))
    want = run(_qk_reference)
    names = ["h", "C", "n", "m", "x'", "x", "Wq", "Wk", "G", "gm", "v", "C0", "n0", "m0"]
    assert_close(got, want, names, tol)


def test_mlstm_qk_gates_not_finite():
    """qk_gates gives None (the caller's checked path) when x, gm or the caller's check sum
    holds a NaN or inf; its result otherwise."""
    gen = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    B, T, H, K = 2, 20, 2, 8
    args = [r(B, T, H * K), r(H * K // 4, 4, 4), r(H * K // 4, 4, 4), r(2 * H, H * K),
            r(B, T, 2 * H), r(B, T, H, K), (r(B, H, K, K), r(B, H, K), r(B, H)), False]
    lib = mlstm_scan.load()
    assert mlstm_scan.qk_gates(lib, *args) is not None
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in (0, 4):
            a = list(args)
            a[i] = a[i].clone()
            a[i][1, 17, 3] = bad
            assert mlstm_scan.qk_gates(lib, *a) is None
        assert mlstm_scan.qk_gates(lib, *args, check=torch.tensor(bad).double()) is None


@pytest.mark.parametrize("threads", [1, 2])
def test_native_blockdiag_gated_through(threads):
    """through=True returns x itself; the gradient of its other uses is added to x's in the
    kernel (against the same uses of x in PyTorch)."""
    gen = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, W0, G = (r(*s).requires_grad_() for s in ((3, 7, 36), (9, 4, 4), (5, 36)))
    w0, wg, wx = r(3, 7, 36), r(3, 7, 5), r(3, 7, 36)
    lib = blockdiag.load()
    with threads_(threads):
        y0, _, g, xt = blockdiag.blockdiag_gated(lib, x, W0, None, G, through=True)
    assert torch.equal(xt, x)
    got = torch.autograd.grad((y0 * w0).sum() + (g * wg).sum() + (xt.sin() * wx).sum(),
                              [x, W0, G])
    y0, _, g = _gated_reference(x, W0, None, G)
    want = torch.autograd.grad((y0 * w0).sum() + (g * wg).sum() + (x.sin() * wx).sum(),
                               [x, W0, G])
    assert_close(got, want, ["x", "W0", "G"], 1e-12)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_mlstm_layer_fused_chunk_matches_torch(monkeypatch, forget_gate):
    """The layer's chunk mode on the CPU runs qk_gates (counted) and matches the PyTorch
    path: output, state and the gradients of x, the parameters and the initial state."""
    from rnnzoo import create
    from rnnzoo.ops import backend

    calls = counter(monkeypatch, mlstm_scan, "qk_gates")
    torch.manual_seed(0)
    layer = create("mlstm", d_model=16, num_heads=2, forget_gate=forget_gate).double()
    with torch.no_grad():
        layer.gates.weight.normal_(0, 0.3)
    x = torch.randn(2, 21, 16, dtype=torch.float64, requires_grad=True)
    state = [s.normal_().requires_grad_() for s in layer.init_state(2, dtype=torch.float64)]
    ins = [x, *state, *layer.parameters()]

    def run():
        y, st = layer(x, state, mode="chunk")
        loss = (y * y).sum() + sum((s * s).sum() for s in st)
        return [y, *st, *torch.autograd.grad(loss, ins)]

    got = run()
    assert calls[0] == 1
    with backend.force("torch"):
        want = run()
    assert_close(got, want, [f"out{i}" for i in range(len(got))], 1e-10)


def _leaves2(*shapes, positive=()):
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(s, dtype=torch.float64, generator=g) + 0.2 if i in positive else
             torch.randn(s, dtype=torch.float64, generator=g)).requires_grad_()
            for i, s in enumerate(shapes)]


@pytest.mark.parametrize("gated,two,through", [(False, False, False), (True, True, True),
                                               (True, False, False)])
def test_blockdiag_second_derivative(gated, two, through):
    """Under create_graph=True the blockdiag nodes' `twice` (einsum forms replayed over the
    saved inputs) give the second derivative in x and the weights, float64, against a
    central difference and the PyTorch form's own double backward; x a strided slice. The
    maps are linear: only the products of x and the weights have second derivatives."""
    lib = blockdiag.load()
    if lib is None:
        pytest.skip("blockdiag does not build")
    wide, W0, W1, G = _leaves2((2, 5, 10), (2, 4, 4), (2, 4, 4), (3, 8))
    ws = [W0, W1, G] if two else [W0, G]
    if not gated:
        native = lambda wide, W0: blockdiag.blockdiag(lib, wide[..., 1:9], W0)  # noqa: E731
        plain = lambda wide, W0: blockdiag._torch_blockdiag(wide[..., 1:9], W0)  # noqa: E731
        ws = [W0]
    else:
        def native(wide, W0, *rest):
            W1, G = rest if two else (None, rest[0])
            out = blockdiag.blockdiag_gated(lib, wide[..., 1:9], W0, W1, G, through=through)
            return tuple(o for o in out if o is not None)

        def plain(wide, W0, *rest):
            W1, G = rest if two else (None, rest[0])
            out = blockdiag._torch_gated(wide[..., 1:9], W0, W1, G, through)
            return tuple(o for o in out if o is not None)
    for a, b in zip(*(o if isinstance(o, tuple) else (o,)
                      for o in (native(wide, *ws), plain(wide, *ws)))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, [wide, *ws], plain)


@pytest.mark.parametrize("exp_gate", [False, True])
def test_mlstm_second_derivative(exp_gate):
    """Under create_graph=True the mLSTM nodes' `twice` (_Gates and _QKGates: the gates pass
    in PyTorch, ops.chunk.linear._mlstm_gates_loop, _QKGates's with blockdiag's products
    before it; the memory: _NativeSSD's, ops.chunk.linear._ssd_loop) give the second
    derivative of h and the final (C, n, m) in every input, float64, against a central
    difference and the reference loop's (mlstm_recurrent, _qk_reference) own double backward."""
    from rnnzoo.ops.chunk.linear import _mlstm_gates_loop, _ssd_loop
    lib = mlstm_scan.load()
    if lib is None:
        pytest.skip("mlstm_scan does not build")
    plain = (_mlstm_gates_loop, _ssd_loop)
    gen = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    B, T, H, K, V, bs = 2, 4, 2, 2, 3, 2
    li, lf = 2 * r(B, T, H), F.logsigmoid(r(B, T, H) + 1)
    gates = [r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), li, lf, r(B, H, K, V), r(B, H, K),
             r(B, H)]
    gates = [t.requires_grad_() for t in gates]

    def native(q, k, v, li, lf, C0, n0, m0):
        h, st = mlstm_scan.mlstm(lib, q, k, v, li, lf, (C0, n0, m0), 1e-6, plain=plain)
        return (h, *st)

    def loop(q, k, v, li, lf, C0, n0, m0):
        h, st = mlstm_recurrent(q, k, v, li, lf, scale=1.0, initial_state=(C0, n0, m0))
        return (h, *st)

    for a, b in zip(native(*gates), loop(*gates)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, gates, loop)
    dim = H * K
    ins = [r(B, T, dim), r(dim // bs, bs, bs) * 0.5, r(dim // bs, bs, bs) * 0.5,
           r(2 * H, dim) * 0.3, r(B, T, 2 * H) + 1, r(B, T, H, V), r(B, H, K, V), r(B, H, K),
           r(B, H)]
    ins = [t.requires_grad_() for t in ins]

    def qk(x, Wq, Wk, G, gm, v, C0, n0, m0):
        h, st, xt = mlstm_scan.qk_gates(lib, x, Wq, Wk, G, gm, v, (C0, n0, m0), exp_gate,
                                        plain=plain)
        return (h, *st, xt.sin())

    def qk_loop(x, Wq, Wk, G, gm, v, C0, n0, m0):
        h, st, xt = _qk_reference(x, Wq, Wk, G, gm, v, (C0, n0, m0), exp_gate)
        return (h, *st, xt.sin())

    for a, b in zip(qk(*ins), qk_loop(*ins)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(qk, ins, qk_loop)
