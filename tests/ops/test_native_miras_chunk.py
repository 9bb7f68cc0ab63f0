"""ops.native.miras_chunk: Miras' chunk loop for the MLP memory in C (every retention and
attentional bias it takes) against the PyTorch loop of ops.memory.miras_chunked (the same
function with the kernel turned off), outputs, final state and the gradients of every input,
learned initial weights and state: float64 at odd widths and at the constant widths the
kernel is compiled for (C = 16, K = 32, F = 128), a sequence that starts mid-chunk and one
that fills its chunks, 1 and 2 threads; float32 at the benchmark's widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, threads

from rnnzoo.ops import memory
from rnnzoo.ops.native import miras_chunk

RULES = [("l2", "kl"), ("lp", "lq"), ("huber", "l2")]     # memora, moneta, yaad


def _run(bias, ret, B, T, H, K, C, n, dtype, native):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k = (F.normalize(r(B, T, H, K), dim=-1) for _ in range(2))
    v = r(B, T, H, K)
    eta, alpha = torch.sigmoid(r(B, T, H)), torch.sigmoid(r(B, T, H) + 1)
    delta = 0.5 * K ** 0.5 * F.softplus(r(B, T, H))     # Huber: rows on both sides of delta
    init = [r(H, K, 4 * K) / K ** 0.5, r(H, 4 * K, K) / (2 * K) ** 0.5]
    mem = memory.miras_init_state("mlp", B, H, K, dtype=dtype)
    state = [0.1 * r(*t.shape) for t in mem[:-1]]
    leaves = [t.requires_grad_() for t in (q, k, v, eta, alpha, delta, *init, *state)]
    loop = memory._native_loop
    memory._native_loop = loop if native else (lambda *a: None)
    try:
        z, s = memory.miras_chunked("mlp", q, k, v, eta, alpha, delta, C, init,
                                    (*state, n.to(dtype)), memory.attentional_bias(bias),
                                    memory.retention(ret))
    finally:
        memory._native_loop = loop
    outs = [z, *s[:-1]]
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outs + [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads)]


@pytest.mark.parametrize("bias,ret", RULES, ids=[r[1] for r in RULES])
@pytest.mark.parametrize("size", ["odd", "wide"])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_kernel_equals_the_pytorch_loop(bias, ret, size, nthreads, monkeypatch):
    B, T, H, K, C, n = ((2, 23, 3, 3, 5, [1.0, 5.0]) if size == "odd" else
                        (2, 37, 1, 32, 16, [0.0, 16.0]))
    n = torch.tensor(n)
    calls = counter(monkeypatch, miras_chunk, "miras_chunks")
    with threads(nthreads):
        got = _run(bias, ret, B, T, H, K, C, n, torch.float64, True)
    assert calls[0] == 1
    want = _run(bias, ret, B, T, H, K, C, n, torch.float64, False)
    assert calls[0] == 1                          # the reference did not take the kernel
    names = ["z", "U'1", "U'2", "U1", "U2", "dq", "dk", "dv", "deta", "dalpha", "ddelta",
             "dinit1", "dinit2", "dU'1", "dU'2", "dU1", "dU2"]
    if bias != "huber":
        names.remove("ddelta")
        del got[10], want[10]
    assert_close(got, want, names, 1e-10)
    assert min(w.abs().max() for w in want) > 1e-6      # no gradient is all zeros


@pytest.mark.parametrize("bias,ret", RULES, ids=[r[1] for r in RULES])
def test_kernel_float32(bias, ret):
    args = (2, 40, 2, 32, 16, torch.tensor([3.0, 0.0]), torch.float32)
    got, want = _run(bias, ret, *args, True), _run(bias, ret, *args, False)
    assert_close(got, want, [str(i) for i in range(len(got))], 2e-4)


def test_other_rules_keep_the_pytorch_loop():
    t = torch.zeros(2)
    assert memory._native_loop("mlp", memory.retention("lq", 3.0), memory.attentional_bias(
        "l2"), t) is None                                   # only the q-scale of q = 4
    assert memory._native_loop("mlp", memory.retention("kl"), memory.attentional_bias(
        "lp", 4.0), t) is None                              # only the l_3 bias
    assert memory._native_loop("linear", memory.retention("kl"), memory.attentional_bias(
        "l2"), t) is None                                   # only the MLP memory
    assert memory._native_loop("mlp", memory.retention("kl"), memory.attentional_bias(
        "l2"), t, t.double()) is None                       # one dtype


def test_books_its_flops():
    """While counting (bench.layer_flops) the kernel runs and books miras_chunk.flops (the
    reads theirs, miras_read.flops)."""
    from rnnzoo.ops import flop_count
    from rnnzoo.ops.native import miras_read
    B, T, H, K, C = 2, 32, 2, 4, 16
    with flop_count.counting() as tally:
        _run("l2", "kl", B, T, H, K, C, torch.zeros(B), torch.float32, True)
    fwd, bwd = miras_chunk.flops(B * H * 2, C, K, 4 * K)     # 2 chunks: a fresh batch, padded
    reads = sum(sum(miras_read.flops(B * H * T, i, o)) for i, o in ((K, 4 * K), (4 * K, K)))
    assert tally[0] == fwd + bwd + reads
