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
@pytest.mark.parametrize("B,H,N,C,K", [(2, 3, 4, 3, 5), (1, 1, 1, 1, 2), (1, 2, 3, 7, 40),
                                      (1, 2, 3, 16, 32)])
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


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,C", [(2, 3, 5, 5), (1, 1, 3, 4), (3, 2, 1, 4)])
def test_titans_segment_equals_the_chunk_form(dtype, tol, B, H, n, C):
    """ops.memory.titans_segment (one chunk opened and ended inside by every sequence, in
    two kernel calls) against titans_chunked(within=True) from a state at a chunk's start
    (n = C, so M' rolls to M, and P0 = M as MAC's aligned segments give it): the read, the
    final M and S and the gradients of every input, a segment cut short (n < C) included."""
    from rnnzoo.ops.memory import titans_chunked, titans_segment

    K = 4
    gen = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = (torch.nn.functional.normalize(r(B, n, H, K), dim=-1) for _ in range(2))
    v = r(B, n, H, K)
    theta, alpha, eta = (torch.rand(B, n, H, generator=gen, dtype=dtype) for _ in range(3))
    W0, M, S, Pg = 0.5 * r(H, K, K), 0.3 * r(B, H, K, K), 0.3 * r(B, H, K, K), r(B, H, K, K)
    ins = [t.requires_grad_() for t in (q, k, v, theta, alpha, eta, W0, M, S)]
    zb = torch.zeros(B, H, K, dtype=dtype)
    state = (Pg, zb, M, zb, S, zb, torch.full((B,), float(C), dtype=dtype))
    init = [W0, torch.zeros(H, K, dtype=dtype)]
    z_ref, s_ref = titans_chunked("linear", q, k, v, theta, alpha, eta, C, init, state, None,
                                  None, 1e-6, False, False, within=True)
    lib = titans_scan.load()
    logits = torch.cat([torch.logit(t) for t in (theta, alpha, eta)], -1)  # (B, n, 3 H)
    z, M1, S1 = titans_segment(lib, q, k, v, logits, W0, M, M, S)
    assert_close((z, M1, S1), (z_ref, s_ref[2], s_ref[4]), ("z", "M", "S"), tol)
    w = [r(*t.shape) for t in (z, M1, S1)]
    grads = [torch.autograd.grad(sum((a * b).sum() for a, b in zip(outs, w)), ins)
             for outs in ((z, M1, S1), (z_ref, s_ref[2], s_ref[4]))]
    assert_close(grads[0], grads[1], "q k v theta alpha eta W0 M S".split(), tol)


def _fast_segments(monkeypatch, titans_layer):
    """A list that grows by one at each segment MAC's fast form runs (its memory through
    titans_segment, or with the conv in one node through titans_scan.mac_memory)."""
    calls = []
    for mod, name in ((titans_layer, "titans_segment"), (titans_scan, "mac_memory")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, real=real: calls.append(1) or real(*a))
    return calls


def test_mac_takes_the_fast_segments_and_leaves_them_at_a_non_finite_input(monkeypatch):
    """Titans-MAC's aligned chunk form runs its segments' memory through titans_segment (or
    titans_scan.mac_memory, the conv and titans_segment in one node) on the CPU, and a non-finite value met mid-sequence (an attention logit overflowing from a
    huge input at a later segment) sends the rest to the general form: outputs equal the
    steps', NaN where theirs are; a NaN memory in the state never enters the fast form."""
    from rnnzoo.layers import titans as titans_layer

    calls = _fast_segments(monkeypatch, titans_layer)
    torch.manual_seed(0)
    layer = rnnzoo.create("titans_mac", d_model=16, num_heads=2, chunk_size=4,
                          num_persistent=1).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(3, 14, 16, dtype=torch.float64)
        y_c, _ = layer(x, mode="chunk")
        y_s, _ = layer(x, mode="sequential")
        assert len(calls) == 4 and (y_c - y_s).abs().max() < 1e-12
        x[2, 10] = 1e200
        calls.clear()
        y_c, s_c = layer(x, mode="chunk")
        y_s, s_s = layer(x, mode="sequential")
        assert len(calls) == 2 and y_c.isnan().any()
        assert torch.equal(y_c.isnan(), y_s.isnan())
        assert (y_c - y_s).nan_to_num().abs().max() < 1e-12
        for a, b in zip(s_c, s_s):
            assert torch.equal(a.isnan(), b.isnan())
        _, s8 = layer(x[:, :8], mode="sequential")
        s8 = list(s8)
        s8[2] = s8[2].clone()
        s8[2][1] = float("nan")
        calls.clear()
        y_c, _ = layer(x[:, 8:10], tuple(s8), mode="chunk")
        y_s, _ = layer(x[:, 8:10], tuple(s8), mode="sequential")
        assert not calls and torch.equal(y_c.isnan(), y_s.isnan()) and y_c[1].isnan().all()
        assert (y_c - y_s).nan_to_num().abs().max() < 1e-12


@pytest.mark.parametrize("row", [1, 3, 5])
def test_mac_keeps_the_general_form_for_a_state_with_bias_rows(monkeypatch, row):
    """A state whose M', M or S bias row is not zero (a memory_bias layer's state handed to
    a weight-only one) is outside titans_segment's weight-only map: MAC's aligned form keeps
    titans_chunked and still equals the steps."""
    from rnnzoo.layers import titans as titans_layer

    calls = _fast_segments(monkeypatch, titans_layer)
    torch.manual_seed(0)
    layer = rnnzoo.create("titans_mac", d_model=8, num_heads=2, chunk_size=4).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        _, s4 = layer(x[:, :4], mode="sequential")
        s4 = list(s4)
        s4[row] = 0.3 * torch.randn_like(s4[row])
        y_c, s_c = layer(x[:, 4:], tuple(s4), mode="chunk")
        y_s, s_s = layer(x[:, 4:], tuple(s4), mode="sequential")
    assert not calls
    assert (y_c - y_s).abs().max() < 1e-12
    assert all((a - b).abs().max() < 1e-12 for a, b in zip(s_c, s_s))
