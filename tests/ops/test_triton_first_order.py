"""The seven Triton autograd nodes under create_graph=True (docs/design.md, higher-order
gradients): each raises the documented first-order error naming its node, and its first
order gradients (create_graph=False) still equal the PyTorch op's, in float64, at one tiny
shape per node. Under TRITON_INTERPRET=1 on CPU (or on CUDA); elsewhere the file re-runs
itself once in a child process with the flag (the chunk kernels need it before triton's
own import; see _triton_interp)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from _triton_interp import CUDA, DEVICE, INTERPRETED, needs_kernels, rerun_in_child  # noqa: E402

from rnnzoo.ops.chunk.delta import delta_rule_recurrent, rwkv7_recurrent  # noqa: E402
from rnnzoo.ops.chunk.linear import gated_linear_attention_recurrent, mlstm_recurrent  # noqa: E402

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)

RAISES = "first order only: create_graph=True through it is not supported"


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check(fn, ref, xs, node):
    """fn(*leaves) and ref(*leaves64) -> tuples of tensors. create_graph through fn raises
    the documented error naming `node`; the first-order gradients of a random functional
    equal ref's (relative to each reference's largest entry, at least 0.01)."""
    leaves = [x.to(DEVICE).requires_grad_() if x is not None else None for x in xs]
    live = [x for x in leaves if x is not None]
    ws = None

    def loss(outs):
        nonlocal ws
        ws = ws or [rand(*o.shape, seed=20 + i) for i, o in enumerate(outs)]
        return sum((o * w.to(o.device, o.dtype)).sum() for o, w in zip(outs, ws))

    with pytest.raises(RuntimeError, match=RAISES) as err:
        torch.autograd.grad(loss(fn(*leaves)), live, create_graph=True)
    assert node in str(err.value) and "mode='sequential'" in str(err.value)
    grads = torch.autograd.grad(loss(fn(*leaves)), live)
    refs = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    grads_ref = torch.autograd.grad(loss(ref(*refs)), [x for x in refs if x is not None])
    for a, b in zip(grads, grads_ref):
        assert (a.cpu().double() - b).abs().max() / b.abs().max().clamp(min=1e-2) < 1e-4


B, T, H, K, V = 1, 5, 1, 16, 16


@needs_kernels
def test_linear_scan():
    from _triton_interp import interpreted
    ts = interpreted("rnnzoo.ops.triton.scan")
    from rnnzoo.ops.scan import linear_scan

    a = 0.5 + 0.5 * torch.rand(2, T, 3, generator=torch.Generator().manual_seed(0))
    check(ts.linear_scan, linear_scan, [a, rand(2, T, 3, seed=1), rand(2, 3, seed=2)],
          "_TritonLinearScan")


@needs_kernels
def test_selective_scan():
    from _triton_interp import interpreted
    tss = interpreted("rnnzoo.ops.triton.selective_scan")
    from rnnzoo.layers.mamba import selective_scan

    g = torch.Generator().manual_seed(0)
    delta = 0.05 + 0.5 * torch.rand(2, T, 4, generator=g)
    A = -2 * torch.rand(4, 3, generator=g)
    xs = [rand(2, T, 4, seed=1), delta, A, rand(2, T, 3, seed=2), rand(2, T, 3, seed=3),
          rand(4, seed=4), rand(2, 4, 3, seed=5)]
    check(tss.selective_scan, lambda *a: selective_scan(*a, chunk_size=3), xs,
          "_TritonSelectiveScan")


@needs_kernels
def test_rnn_sequence():
    from _triton_interp import interpreted
    tr = interpreted("rnnzoo.ops.triton.rnn")
    from rnnzoo.cells.lstm import LSTMCell

    torch.manual_seed(0)
    cell = LSTMCell(3, 8)
    w = cell.weight_hh.detach()
    with torch.no_grad():
        xp = cell.project(rand(2, T, 3, seed=1))

    def ref(xp, w, h, c):
        cell64 = LSTMCell(3, 8).double()
        del cell64.weight_hh
        cell64.weight_hh = w  # the leaf itself, so that its gradient is taken
        outs, state = [], (h, c)
        for xp_t in xp.unbind(1):
            state = cell64.recur(xp_t, state)
            outs.append(cell64.output(state))
        return (torch.stack(outs, 1), *state)

    def ours(xp, w, h, c):
        y, final = tr.lstm_sequence(xp, w, h, c)
        return (y, *final)

    check(ours, ref, [xp, w, 0.5 * rand(2, 8, seed=2), 0.5 * rand(2, 8, seed=3)], "_Sequence")


@needs_kernels
def test_chunk_delta():
    from rnnzoo.ops.triton import chunk_delta

    k = F.normalize(rand(B, T, H, K, seed=1), dim=-1)
    beta = 2 * torch.rand(B, T, H, generator=torch.Generator().manual_seed(3))
    xs = [rand(B, T, H, K, seed=0), k, rand(B, T, H, V, seed=2), beta, rand(B, H, K, V, seed=5)]
    check(lambda q, k, v, b, s: chunk_delta.delta_rule(q, k, v, b, initial_state=s),
          lambda q, k, v, b, s: delta_rule_recurrent(q, k, v, b, initial_state=s), xs, "_Delta")


@needs_kernels
def test_chunk_linear():
    from rnnzoo.ops.triton import chunk_linear

    g = -torch.rand(B, T, H, generator=torch.Generator().manual_seed(3))
    xs = [rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2), g]
    check(chunk_linear.gated_linear_attention, gated_linear_attention_recurrent, xs, "_GLA")


@needs_kernels
def test_chunk_mlstm():
    from rnnzoo.ops.triton import chunk_mlstm

    xs = [rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2),
          3 * rand(B, T, H, seed=3), F.logsigmoid(3 * rand(B, T, H, seed=4))]

    def flat(op):
        return lambda *a: (lambda h, s: (h, *s))(*op(*a))

    check(flat(chunk_mlstm.mlstm), flat(mlstm_recurrent), xs, "_MLSTM")


@needs_kernels
def test_chunk_rwkv7():
    from rnnzoo.ops.triton import chunk_rwkv7

    w = -math.exp(-0.5) * torch.sigmoid(rand(B, T, H, K, seed=3))
    kappa = F.normalize(rand(B, T, H, K, seed=4), dim=-1)
    alpha = torch.sigmoid(rand(B, T, H, K, seed=5))
    xs = [rand(B, T, H, K, seed=0), w, rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2),
          -kappa, kappa * alpha]
    check(chunk_rwkv7.rwkv7, rwkv7_recurrent, xs, "_RWKV7")
