"""ops.native.titans_scan, the C chunk loop of Titans' linear weight-only memory, against
the same map written as a PyTorch loop over chunks: outputs, every chunk's starting (M, S)
and the gradients of all thirteen inputs (with gradients on the states too), odd sizes, a
gradient point P0 != M0, 1 and 2 threads; and the layer proven to take it on the CPU (and
to equal its PyTorch path under force("torch"))."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads

import rnnzoo
from rnnzoo.ops import backend, flop_count
from rnnzoo.ops.native import titans_scan


def _loop(q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0):
    """The chunk map of titans_scan.py's docstring, one chunk at a time."""
    M, S, P, os, Ms, Ss = M0, S0, P0, [], [M0], [S0]
    for n in range(q.shape[2]):
        qn, kn, A, f = q[:, :, n], k[:, :, n], ga[:, :, n, :, None], gf[:, :, n, :, None]
        G = kn @ (P + W0) + R[:, :, n]
        os.append(qn @ W0 + A * (qn @ M) + f * (qn @ S) - att[:, :, n].tril() @ G)
        upd = lambda w: (kn * w[..., None]).transpose(-1, -2) @ G  # noqa: E731
        M, S = (A[:, :, -1:] * M + f[:, :, -1:] * S - upd(cl[:, :, n]),
                gE[:, :, n, None, None] * S - upd(re[:, :, n]))
        P = M
        Ms.append(M)
        Ss.append(S)
    return torch.stack(os, 2), torch.stack(Ms, 2), torch.stack(Ss, 2)


def _inputs(B, H, N, C, K, dtype):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    att = r(B, H, N, C, C).tril()
    return [t.requires_grad_() for t in (
        0.5 * r(B, H, N, C, K), 0.5 * r(B, H, N, C, K), r(B, H, N, C, K), att,
        u(B, H, N, C), u(B, H, N, C), 0.3 * u(B, H, N, C), 0.3 * u(B, H, N, C), u(B, H, N),
        r(B, H, K, K), r(B, H, K, K), r(B, H, K, K), r(H, K, K))]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,H,N,C,K", [(2, 3, 4, 3, 5), (1, 1, 1, 1, 2), (1, 2, 3, 7, 40)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_titans_matches_the_loop(dtype, tol, B, H, N, C, K, n_threads):
    ins = _inputs(B, H, N, C, K, dtype)
    lib = titans_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(titans_scan.titans_linear(lib, *ins), ins)
    want = outputs_and_grads(_loop(*ins), ins)
    assert_close(got, want, [f"out{i}" for i in range(len(want))], tol)


def test_titans_layer_runs_the_kernel_on_the_cpu(monkeypatch):
    ran = counter(monkeypatch, titans_scan, "titans_linear")
    torch.manual_seed(0)
    layer = rnnzoo.create("titans", d_model=8, num_heads=2, head_dim=4, chunk_size=3).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    y, s = layer(x, mode="chunk")
    assert ran[0] == 1
    gx = torch.autograd.grad((y ** 2).sum() + s[2].sum(), x)[0]
    with backend.force("torch"):
        y_t, s_t = layer(x, mode="chunk")
        gx_t = torch.autograd.grad((y_t ** 2).sum() + s_t[2].sum(), x)[0]
    assert ran[0] == 1
    assert (y - y_t).abs().max() < 1e-12 and (gx - gx_t).abs().max() < 1e-12
    assert max((a - b).abs().max() for a, b in zip(s, s_t)) < 1e-12


def test_kernel_books_its_flops_while_counting():
    """bench.layer_flops sees the kernel through ops.flop_count: forward and backward book
    titans_scan.flops over the (pair, chunk)s, and nothing outside counting()."""
    ins = _inputs(2, 3, 4, 3, 5, torch.float64)
    lib = titans_scan.load()
    with flop_count.counting() as tally:
        o, _, _ = titans_scan.titans_linear(lib, *ins)
        assert tally[0] == titans_scan.flops(2 * 3 * 4, 3, 5)[0]
        torch.autograd.grad(o.sum(), ins)
    assert tally[0] == sum(titans_scan.flops(2 * 3 * 4, 3, 5))


def _gates_torch(q, k, a, e, m, th):
    """The gate coefficients as ops.memory's PyTorch path makes them."""
    from rnnzoo.ops.memory import _coefficients
    Cm, f, REth, Acum, Ecum = _coefficients(a, e, m, th)
    return Cm * (q @ k.transpose(-1, -2)), Acum, f, Cm[..., -1, :], REth, Ecum[..., -1]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,H,N,C,K", [(2, 3, 4, 5, 3), (1, 1, 2, 1, 2)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_gates_match_the_pytorch_coefficients(dtype, tol, B, H, N, C, K, n_threads):
    """titans_gates against _coefficients and Cm o q k^T: all six outputs and the gradients
    of all six inputs (gates in (0.2, 1.2), q, k random)."""
    gen = torch.Generator().manual_seed(0)
    ins = [torch.randn(B, H, N, C, K, generator=gen, dtype=dtype) for _ in range(2)]
    ins += [0.2 + torch.rand(B, H, N, C, generator=gen, dtype=dtype) for _ in range(4)]
    ins = [t.requires_grad_() for t in ins]
    lib = titans_scan.load()
    with threads(n_threads):
        got = outputs_and_grads(titans_scan.titans_gates(lib, *ins), ins)
    want = outputs_and_grads(_gates_torch(*ins), ins)
    assert not got[0].triu(1).any()
    assert_close(got, want, [f"out{i}" for i in range(len(want))], tol)


def test_gates_book_their_flops():
    ins = [torch.randn(2, 1, 3, 4, 5, dtype=torch.float64) for _ in range(2)]
    ins += [torch.rand(2, 1, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    with flop_count.counting() as tally:
        att = titans_scan.titans_gates(titans_scan.load(), *ins)[0]
        assert tally[0] == titans_scan.gate_flops(6, 4, 5)[0]
        torch.autograd.grad(att.sum(), ins[2:])
    assert tally[0] == sum(titans_scan.gate_flops(6, 4, 5))


@pytest.mark.parametrize("tail", [1, 2])
def test_native_titans_tail_is_the_last_states(tail):
    """titans_linear(tail=n) returns the last n of Ms, Ss, and the gradients of all inputs
    are those of the full outputs' last n."""
    ins = _inputs(2, 3, 4, 3, 5, torch.float64)
    lib = titans_scan.load()
    o, Ms, Ss = titans_scan.titans_linear(lib, *ins)
    want = outputs_and_grads((o, Ms[:, :, -tail:], Ss[:, :, -tail:]), ins)
    got = outputs_and_grads(titans_scan.titans_linear(lib, *ins, tail=tail), ins)
    assert_close(got, want, [f"out{i}" for i in range(len(want))], 1e-12)
