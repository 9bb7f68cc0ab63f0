"""ops.native.ttt_loop: TTT-Linear's whole mini-batch loop in C against ops.memory's torch loop
(ttt_minibatch under backend.force("torch")): the output, the state after each element's last
mini-batch and the gradients in every input (queries, keys, values, rates, tok, the initial
weights, the inner norm, and a begun state's weights and sums), with and without the inner
norm, float64 to 1e-11 and float32 to 1e-4, on two threads; shapes with T not a multiple of
the mini-batch, one batch row and one head, a head width not a vector wide, sequences at
their own offsets; and TTT-Linear's minibatch form calls it once."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo import create
from rnnzoo.ops import backend, memory
from rnnzoo.ops.native import ttt_loop


def _inputs(B, T, H, K, M, dtype, begun, norm):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, K)
    lr = 0.3 * torch.rand(B, T, H, generator=g, dtype=dtype)
    tok = 1 / torch.arange(1, M + 1, dtype=dtype) + 0.05 * r(M)
    init = [0.3 * r(H, K, K), 0.1 * r(H, K)]
    w, b = 1 + 0.2 * r(H, K), 0.1 * r(H, K)
    state = list(memory.ttt_init_state("linear", B, H, K, dtype=dtype))
    if begun:  # weights and sums brought in, each element at its own step of a mini-batch
        state[:4] = [0.05 * r(*t.shape) for t in state[:4]]
        state[4] = torch.arange(B, dtype=dtype) * 3 % (M + 1)
    leaves = [q, k, v, lr, tok, *init, *([w, b] if norm else []),
              *(state[:4] if begun else [])]
    for t in leaves:
        t.requires_grad_()
    return (q, k, v, lr, tok, init, tuple(state), w, b), leaves


def _run(args, leaves, norm):
    q, k, v, lr, tok, init, state, w, b = args
    z, new = memory.ttt_minibatch("linear", q, k, v, lr, tok, init, state, w, b, 1e-6, norm)
    return outputs_and_grads([z, *new[:4]], leaves)


@pytest.mark.parametrize("shape", [(2, 37, 2, 5, 4), (1, 16, 1, 8, 16), (3, 50, 2, 32, 16)])
@pytest.mark.parametrize("begun", [False, True])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
def test_native_loop_equals_torch(shape, begun, norm, dtype, tol, monkeypatch):
    calls = counter(monkeypatch, ttt_loop, "loop")
    args, leaves = _inputs(*shape, dtype, begun, norm)
    with threads(2):
        got = _run(args, leaves, norm)
    assert calls[0] == 1
    with backend.force("torch"):
        want = _run(args, leaves, norm)
    assert calls[0] == 1
    names = ["z", "dW", "db", "A", "Ab", "dq", "dk", "dv", "dlr", "dtok", "dW0", "db0",
             *(["dw", "dnb"] if norm else []), "d dW", "d db", "dA", "dAb"]
    assert_close(got, want, names, tol)
    # (the state's weights are exactly zero after a fresh state's only mini-batch)
    assert all(t.abs().max() > 1e-4 for t in [got[0], *got[5:]])


def test_ttt_linear_loops_in_c(monkeypatch):
    calls = counter(monkeypatch, ttt_loop, "loop")
    torch.manual_seed(0)
    layer = create("ttt_linear", d_model=16, num_heads=2, mini_batch_size=4).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y = layer(x, mode="minibatch")[0]
    assert calls[0] == 1
    with backend.force("torch"):
        ref = layer(x, mode="minibatch")[0]
    assert calls[0] == 1
    assert (y - ref).abs().max() < 1e-12
