"""The seven Triton autograd nodes under create_graph=True (docs/design.md, higher-order
gradients): each node's `twice` replays the PyTorch form its op's caller passes (`plain`),
so that the second derivative through the op is that form's: in float64 against a central
difference where the kernel takes float64 (linear_scan, selective_scan), else in float32
against the PyTorch form's own double backward. The ops are called as the layers call them
(ops.scan, layers.mamba, ops.chunk, the cells' `fused`, inside backend.force("triton")), so
that the wiring of `plain` is tested too; without `plain` the node raises the documented
first-order error. First-order gradients (create_graph=False) still equal the PyTorch op's,
in float64, at one tiny shape per node. Under TRITON_INTERPRET=1 on CPU (or on CUDA);
elsewhere the file re-runs itself once in a child process with the flag (the chunk kernels
need it before triton's own import; see _triton_interp)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from _triton_interp import CUDA, DEVICE, INTERPRETED, needs_kernels, rerun_in_child  # noqa: E402

from rnnzoo.ops import backend  # noqa: E402
from rnnzoo.ops.chunk import delta as chunk_delta_op  # noqa: E402
from rnnzoo.ops.chunk import linear as chunk_linear_op  # noqa: E402
from rnnzoo.ops.chunk.delta import delta_rule_recurrent, rwkv7_recurrent  # noqa: E402
from rnnzoo.ops.chunk.linear import gated_linear_attention_recurrent, mlstm_recurrent  # noqa: E402

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)

RAISES = "first order only: create_graph=True through it is not supported"


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reaches(outs, node):
    """Whether the autograd graph of outs holds `node`'s backward (the kernel ran)."""
    seen, todo = set(), [o.grad_fn for o in outs if o.grad_fn is not None]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if type(f).__name__ == f"{node}Backward":
            return True
        todo.extend(g for g, _ in f.next_functions)
    return False


def check(fn, ref, xs, node, f64=False):
    """fn(*leaves) (the op through its Triton node) and ref(*leaves) (its PyTorch form) ->
    tuples of tensors. The first-order gradients of a random functional equal ref's in
    float64 (relative to each reference's largest entry, at least 0.01). The second
    derivative, of L = sum |d <c, fn> / d leaves|^2 along a random direction: against L's
    central difference (f64: the leaves in float64, a kernel that takes it), else equal to
    ref's own double backward in the leaves' dtype (float32)."""
    dtype = torch.float64 if f64 else torch.float32
    leaves = [x.to(DEVICE, dtype).requires_grad_() if x is not None else None for x in xs]
    live = [x for x in leaves if x is not None]
    ws = None

    def loss(outs):
        nonlocal ws
        ws = ws or [rand(*o.shape, seed=20 + i) for i, o in enumerate(outs)]
        return sum((o * w.to(o.device, o.dtype)).sum() for o, w in zip(outs, ws))

    outs = fn(*leaves)
    assert _reaches(outs, node), node
    grads = torch.autograd.grad(loss(outs), live)
    refs = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    grads_ref = torch.autograd.grad(loss(ref(*refs)), [x for x in refs if x is not None])
    for a, b in zip(grads, grads_ref):
        assert (a.cpu().double() - b).abs().max() / b.abs().max().clamp(min=1e-2) < 1e-4

    def L(f, xs, cg):
        gs = torch.autograd.grad(loss(f(*xs)), [x for x in xs if x is not None],
                                 create_graph=cg)
        return sum(g.square().sum() for g in gs)

    h = torch.autograd.grad(L(fn, leaves, True), live, allow_unused=True)
    h = [torch.zeros_like(x) if a is None else a for x, a in zip(live, h)]
    assert sum(a.abs().sum() for a in h) > 0
    if f64:
        gen = torch.Generator().manual_seed(7)
        v = [torch.randn(x.shape, generator=gen, dtype=dtype).to(DEVICE) for x in live]

        def at(e):
            it = iter(v)
            xs2 = [None if x is None else (x + e * next(it)).detach().requires_grad_()
                   for x in leaves]
            return L(fn, xs2, False)

        eps = 1e-6
        fd = (at(eps) - at(-eps)) / (2 * eps)
        hv = sum((a * d).sum() for a, d in zip(h, v))
        torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)
    else:
        want = torch.autograd.grad(L(ref, leaves, True), live, allow_unused=True)
        for a, b in zip(h, want):
            b = torch.zeros_like(a) if b is None else b
            assert (a - b).abs().max() / b.abs().max().clamp(min=1e-2) < 1e-5, node


B, T, H, K, V = 1, 5, 1, 16, 16


@needs_kernels
def test_linear_scan():
    from _triton_interp import interpreted
    ts = interpreted("rnnzoo.ops.triton.scan")
    from rnnzoo.ops.scan import linear_scan

    a = 0.5 + 0.5 * torch.rand(2, T, 3, generator=torch.Generator().manual_seed(0))
    xs = [a, rand(2, T, 3, seed=1), rand(2, 3, seed=2)]

    def ours(*args):
        with backend.force("triton"):
            return linear_scan(*args)
    check(ours, linear_scan, xs, "_TritonLinearScan", f64=True)
    # without the PyTorch form the node raises the documented error
    leaves = [x.double().requires_grad_() for x in xs]
    with pytest.raises(RuntimeError, match=RAISES):
        torch.autograd.grad(ts.linear_scan(*leaves)[0].square().sum(), leaves,
                            create_graph=True)


@needs_kernels
def test_selective_scan():
    from _triton_interp import interpreted
    interpreted("rnnzoo.ops.triton.selective_scan")
    from rnnzoo.layers.mamba import selective_scan

    g = torch.Generator().manual_seed(0)
    delta = 0.05 + 0.5 * torch.rand(2, T, 4, generator=g)
    A = -2 * torch.rand(4, 3, generator=g)
    xs = [rand(2, T, 4, seed=1), delta, A, rand(2, T, 3, seed=2), rand(2, T, 3, seed=3),
          rand(4, seed=4), rand(2, 4, 3, seed=5)]

    def ours(*args):
        with backend.force("triton"):
            return selective_scan(*args)
    check(ours, lambda *a: selective_scan(*a, chunk_size=3), xs, "_TritonSelectiveScan",
          f64=True)


@needs_kernels
@pytest.mark.parametrize("kind", ["lstm", "gru", "slstm"])
def test_rnn_sequence(kind):
    from _triton_interp import interpreted
    interpreted("rnnzoo.ops.triton.rnn")
    from rnnzoo.cells.gru import GRUCell
    from rnnzoo.cells.lstm import LSTMCell
    from rnnzoo.cells.slstm import SLSTMCell

    torch.manual_seed(0)
    cls = {"lstm": LSTMCell, "gru": GRUCell, "slstm": SLSTMCell}[kind]
    cell = cls(3, 8) if kind != "slstm" else cls(3, 8, num_heads=2)
    S = len(cell.state_sizes)
    names = [n for n, _ in cell.named_parameters()]

    def run(forced):
        def f(x, *args):
            c = cell.to(x.dtype)
            state, params = args[:S], dict(zip(names, args[S:]))
            with backend.force(forced):
                y, final = torch.func.functional_call(c, params, (x, tuple(state), True))
            return (y, *final)
        return f

    x = rand(2, T, 3, seed=1)
    states = [0.5 * rand(2, 8, seed=2 + i) for i in range(S)]
    if kind == "slstm":  # m0: the stabiliser, any real; n0 > 0
        states[2] = states[2].abs() + 1
    params = [p.detach() for p in cell.parameters()]
    check(run("triton"), run("torch"), [x, *states, *params], "_Sequence")


@needs_kernels
def test_chunk_delta():
    k = F.normalize(rand(B, T, H, K, seed=1), dim=-1)
    beta = 2 * torch.rand(B, T, H, generator=torch.Generator().manual_seed(3))
    xs = [rand(B, T, H, K, seed=0), k, rand(B, T, H, V, seed=2), beta, -torch.rand(
        B, T, H, generator=torch.Generator().manual_seed(4)), rand(B, H, K, V, seed=5)]

    def ours(q, k, v, b, g, s):
        with backend.force("triton"):
            return chunk_delta_op.delta_rule(q, k, v, b, g, initial_state=s)
    check(ours, lambda q, k, v, b, g, s: delta_rule_recurrent(q, k, v, b, g, initial_state=s),
          xs, "_Delta")


@needs_kernels
@pytest.mark.parametrize("decay", ["scalar", "vector"])
def test_chunk_linear(decay):
    shape = (B, T, H) if decay == "scalar" else (B, T, H, K)
    g = -torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    xs = [rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2), g,
          rand(B, H, K, V, seed=4)]

    def ours(q, k, v, g, s):
        with backend.force("triton"):
            return chunk_linear_op.gated_linear_attention(q, k, v, g, initial_state=s)
    check(ours, lambda q, k, v, g, s: gated_linear_attention_recurrent(q, k, v, g,
                                                                        initial_state=s),
          xs, "_GLA")


@needs_kernels
def test_chunk_mlstm():
    xs = [rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2),
          3 * rand(B, T, H, seed=3), F.logsigmoid(3 * rand(B, T, H, seed=4)),
          rand(B, H, K, V, seed=5), rand(B, H, K, seed=6), rand(B, H, seed=7)]

    def flat(op):
        def f(q, k, v, li, lf, c0, n0, m0):
            with backend.force("triton"):
                h, s = op(q, k, v, li, lf, initial_state=(c0, n0, m0))
            return (h, *s)
        return f

    check(flat(chunk_linear_op.mlstm), flat(mlstm_recurrent), xs, "_MLSTM")


@needs_kernels
def test_chunk_rwkv7():
    w = -math.exp(-0.5) * torch.sigmoid(rand(B, T, H, K, seed=3))
    kappa = F.normalize(rand(B, T, H, K, seed=4), dim=-1)
    alpha = torch.sigmoid(rand(B, T, H, K, seed=5))
    xs = [rand(B, T, H, K, seed=0), w, rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2),
          -kappa, kappa * alpha, rand(B, H, K, V, seed=6)]

    def ours(r, w, k, v, a, b, s):
        with backend.force("triton"):
            return chunk_delta_op.rwkv7(r, w, k, v, a, b, initial_state=s)
    check(ours, lambda r, w, k, v, a, b, s: rwkv7_recurrent(r, w, k, v, a, b, initial_state=s),
          xs, "_RWKV7")
