"""ops.native.ttt_loop: TTT-Linear's and TTT-MLP's whole mini-batch loops in C against
ops.memory's torch loop (ttt_minibatch under backend.force("torch")): the output, the state after each element's last
mini-batch and the gradients in every input (queries, keys, values, rates, tok, the initial
weights, the inner norm, and a begun state's weights and sums), with and without the inner
norm, float64 to 1e-11 and float32 to 1e-4, on two threads; shapes with T not a multiple of
the mini-batch, one batch row and one head, a head width not a vector wide, sequences at
their own offsets; and each layer's minibatch form calls its loop once."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo import create
from rnnzoo.ops import backend, memory
from rnnzoo.ops.native import ttt_loop


def _inputs(kind, B, T, H, K, M, dtype, begun, norm):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, K)
    lr = 0.3 * torch.rand(B, T, H, generator=g, dtype=dtype)
    tok = 1 / torch.arange(1, M + 1, dtype=dtype) + 0.05 * r(M)
    F = 4 * K
    init = ([0.3 * r(H, K, K), 0.1 * r(H, K)] if kind == "linear"
            else [0.3 * r(H, K, F), 0.1 * r(H, F), 0.2 * r(H, F, K), 0.1 * r(H, K)])
    w, b = 1 + 0.2 * r(H, K), 0.1 * r(H, K)
    state = list(memory.ttt_init_state(kind, B, H, K, dtype=dtype))
    if begun:  # weights and sums brought in, each element at its own step of a mini-batch
        state[:-1] = [0.05 * r(*t.shape) for t in state[:-1]]
        state[-1] = torch.arange(B, dtype=dtype) * 3 % (M + 1)
    leaves = [q, k, v, lr, tok, *init, *([w, b] if norm else []),
              *(state[:-1] if begun else [])]
    for t in leaves:
        t.requires_grad_()
    return (q, k, v, lr, tok, init, tuple(state), w, b), leaves


def _run(kind, args, leaves, norm):
    q, k, v, lr, tok, init, state, w, b = args
    z, new = memory.ttt_minibatch(kind, q, k, v, lr, tok, init, state, w, b, 1e-6, norm)
    return outputs_and_grads([z, *new[:-1]], leaves)


@pytest.mark.parametrize("shape", [(2, 37, 2, 5, 4), (1, 16, 1, 8, 16), (3, 50, 2, 32, 16)])
@pytest.mark.parametrize("begun", [False, True])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_native_loop_equals_torch(kind, shape, begun, norm, dtype, tol, monkeypatch):
    calls = counter(monkeypatch, ttt_loop, "loop", "mlp_loop")
    args, leaves = _inputs(kind, *shape, dtype, begun, norm)
    with threads(2):
        got = _run(kind, args, leaves, norm)
    assert calls[0] == 1
    with backend.force("torch"):
        want = _run(kind, args, leaves, norm)
    assert calls[0] == 1
    W = ["W", "b"] if kind == "linear" else ["W1", "b1", "W2", "b2"]
    names = ["z", *W, *["A" + n for n in W], "dq", "dk", "dv", "dlr", "dtok",
             *["d init " + n for n in W], *(["dw", "dnb"] if norm else []),
             *["d state " + n for n in W], *["d state A" + n for n in W]]
    assert_close(got, want, names, tol)
    # (the state's weights are exactly zero after a fresh state's only mini-batch)
    assert all(t.abs().max() > 1e-4 for t in [got[0], *got[1 + 2 * len(W):]])


@pytest.mark.parametrize("name,fn", [("ttt_linear", "loop"), ("ttt_mlp", "mlp_loop")])
def test_ttt_layers_loop_in_c(name, fn, monkeypatch):
    calls = counter(monkeypatch, ttt_loop, fn)
    torch.manual_seed(0)
    layer = create(name, d_model=16, num_heads=2, mini_batch_size=4).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y = layer(x, mode="minibatch")[0]
    assert calls[0] == 1
    with backend.force("torch"):
        ref = layer(x, mode="minibatch")[0]
    assert calls[0] == 1
    assert (y - ref).abs().max() < 1e-12


@pytest.mark.parametrize("shape", [(2, 37, 2, 5, 4), (3, 50, 2, 32, 16)])
@pytest.mark.parametrize("begun", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
def test_native_loop_output_alone(shape, begun, dtype, tol, monkeypatch):
    """TTT-Linear's loop when only the output has a gradient (the final state unused, as in
    training): the loop's backward gets no gradient of its sums S, s (NULL in C, no zero
    tensor), and every input's gradient still equals the torch loop's."""
    calls = counter(monkeypatch, ttt_loop, "loop")
    args, leaves = _inputs("linear", *shape, dtype, begun, True)

    def run():
        q, k, v, lr, tok, init, state, w, b = args
        z, _ = memory.ttt_minibatch("linear", q, k, v, lr, tok, init, state, w, b, 1e-6)
        return outputs_and_grads([z], leaves)

    with threads(2):
        got = run()
    assert calls[0] == 1
    with backend.force("torch"):
        want = run()
    names = ["z", "dq", "dk", "dv", "dlr", "dtok", "d init W", "d init b", "dw", "dnb",
             "d state W", "d state b", "d state AW", "d state Ab"]
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
def test_native_loop_reads_a_layers_layout(kind, dtype, tol):
    """T a multiple of the mini-batch, a fresh state, several heads: the kernels read q, k, v,
    lr in the layer's (B, T, H, K) layout (q, k, v slices of one wider tensor, as TTT's are)
    and write z and their gradients in it; equal to the torch loop."""
    B, T, H, K, M = 2, 32, 3, 8, 16
    args, leaves = _inputs(kind, B, T, H, K, M, dtype, False, True)
    _, _, _, lr, tok, init, state, w, b = args
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(B, T, 3, H, K, generator=g, dtype=dtype).requires_grad_()
    leaves = [wide, *leaves[3:]]

    def run():
        q, k, v = wide.unbind(2)
        z, new = memory.ttt_minibatch(kind, q, k, v, lr, tok, init, state, w, b, 1e-6)
        return outputs_and_grads([z, *new[:-1]], leaves)

    with threads(2):
        got = run()
    with backend.force("torch"):
        want = run()
    assert_close(got, want, [f"out {i}" for i in range(len(got))], tol)
    assert got[0].is_contiguous()
