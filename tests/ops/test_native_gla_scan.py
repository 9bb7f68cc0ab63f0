"""ops.native.gla_scan: vector-decay gated linear attention (and RWKV-6's bonus) as a C
recurrence, run by ops.chunk.linear.gated_linear_attention on the CPU, against the chunked
PyTorch form under backend.force("torch"): outputs, final state and the gradients of q, k, v,
the log-decays, the initial state and the bonus (with a gradient on the final state too), T
not a multiple of the 32-step checkpoint, a scalar decay with a bonus, 1 and 2 threads. The
PyTorch form keeps its own check against the recurrent reference at every decay strength
(its three intra-chunk paths), since the CPU tests of test_chunk_linear now reach the C path.
Also its two other users: gated slot attention's passes (ops.gsa, the first with the decay on
the value axis) against the chunked `_two_passes`, and LightNet's additive gate scan against
logcumsumexp."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, native_vs_torch, outputs_and_grads
from _native_check import threads as threads_
from _second_order import second_order

from rnnzoo.layers.lightnet import additive_gate
from rnnzoo.ops import backend
from rnnzoo.ops.chunk import linear
from rnnzoo.ops.gsa import gated_slot_attention
from rnnzoo.ops.native import gla_scan


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, gla_scan, "gla")


def _inputs(dtype, T, H=3, K=5, V=6, strength=1.0, bonus=True, scalar=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B = 2
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v, S0 = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, H, K, V)
    g = -strength * torch.rand(*((B, T, H) if scalar else (B, T, H, K)), generator=gen,
                               dtype=dtype)
    u = r(H, K) if bonus else None
    return [t.requires_grad_() for t in (q, k, v, g, S0, u) if t is not None]


def _run(ins, bonus, **kw):
    q, k, v, g, S0, *u = ins
    o, S = linear.gated_linear_attention(q, k, v, g, initial_state=S0,
                                         bonus=u[0] if bonus else None, **kw)
    return outputs_and_grads([o, S], ins)


NAMES = ["o", "S", "q", "k", "v", "g", "S0", "u"]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("T", [37, 70, 1])
@pytest.mark.parametrize("bonus", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("K,V", [(5, 6), (7, 21), (4, 16), (19, 6)])
def test_native_gla_matches_chunked(calls, dtype, tol, T, bonus, threads, K, V):
    """V = 6, 21, 16: one narrow column tile, a full one and a narrow one, one exact (the
    kernel's tiles are 16 floats or 8 doubles); K = 5, 7 odd (its rows run in pairs); K = 19
    sums its rows' dot products 8 rows (4 doubles) at a time and a part group."""
    ins = _inputs(dtype, T, K=K, V=V, bonus=bonus)
    got, want = native_vs_torch(
        lambda: _run(ins, bonus, scale=0.7, chunk_size=8, subchunk_size=4), threads)
    assert calls[0] == 1
    assert_close(got, want, NAMES, tol)


def test_scalar_decay_with_bonus_runs_native(calls):
    """A scalar decay per head with a bonus goes native as a vector decay broadcast over K."""
    ins = _inputs(torch.float64, 41, scalar=True)
    got = _run(ins, True, chunk_size=8)
    with backend.force("torch"):
        want = _run(ins, True, chunk_size=8)
    assert calls[0] == 1
    assert_close(got, want, NAMES, 1e-10)


def test_scalar_decay_without_bonus_stays_off_this_kernel(calls):
    ins = _inputs(torch.float64, 20, bonus=False, scalar=True)
    _run(ins, False, chunk_size=8)
    assert calls[0] == 0


@pytest.mark.parametrize("strength", [3.0, 30.0, 400.0])
@pytest.mark.parametrize("bonus", [False, True])
def test_strong_decays_native_and_chunked_equal_recurrent(calls, strength, bonus):
    """400 per step underflows the decay to 0 in float64's exp; the chunk form takes its
    exact log-space blocks there, the recurrence multiplies by 0."""
    ins = _inputs(torch.float64, 19, strength=strength, bonus=bonus)
    q, k, v, g, S0, *u = ins
    o, S = linear.gated_linear_attention_recurrent(q, k, v, g, initial_state=S0,
                                                   bonus=u[0] if bonus else None)
    want = outputs_and_grads([o, S], ins)
    got = _run(ins, bonus, chunk_size=8, subchunk_size=2)
    with backend.force("torch"):
        chunked = _run(ins, bonus, chunk_size=8, subchunk_size=2)
    assert calls[0] == 1
    assert_close(got, want, NAMES, 1e-10)
    assert_close(chunked, want, NAMES, 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,V", [(3, 4), (19, 18)])
def test_gsa_native_passes_match_chunked(monkeypatch, dtype, tol, threads, M, V):
    """M, V = 19, 18: slot rows of more than one vector each side."""
    n = counter(monkeypatch, gla_scan, "gsa_passes")
    gen = torch.Generator().manual_seed(0)
    B, T, H, K = 2, 37, 2, 5
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    log_alpha = torch.nn.functional.logsigmoid(r(B, T, H, M)) / 4
    ins = [t.requires_grad_() for t in (r(B, T, H, K), r(B, T, H, K), r(B, T, H, V),
                                        -torch.expm1(log_alpha), log_alpha,
                                        r(B, H, K, M), r(B, H, M, V))]

    def run():
        q, k, v, s, la, hk0, hv0 = ins
        o, (hk, hv) = gated_slot_attention(q, k, v, s, la, initial_state=(hk0, hv0),
                                           chunk_size=8)
        return outputs_and_grads([o, hk, hv], ins)

    got, want = native_vs_torch(run, threads)
    assert n[0] == 1
    assert_close(got, want, ["o", "hk", "hv", "q", "k", "v", "s", "log_alpha", "hk0", "hv0"],
                 tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B,T,H,K,M,V", [(1, 70, 1, 32, 64, 32), (2, 33, 3, 9, 7, 17),
                                         (2, 1, 2, 3, 3, 2), (3, 64, 1, 8, 5, 8)])
@pytest.mark.parametrize("case", ["all", "o only", "no state", "sharp"])
def test_gsa_passes_kernel_matches_torch(monkeypatch, dtype, tol, threads, B, T, H, K, M, V,
                                         case):
    """gla_scan.gsa_passes (gsa_fwd / gsa_bwd: both passes and the softmax as one recurrence)
    against the chunked PyTorch form: o, both states and every input's gradient. K = V = 32 is
    the kernel's unrolled head_dim-32 path (float and double), the others its general one;
    T = 70, 33 end inside a checkpoint block, 64 on one, 1 is a single step. "o only": the
    states' gradients zero; "no state": the zero start the op makes; "sharp": scores 30x
    larger (a softmax near one-hot) and decays to e^-2 a step."""
    n = counter(monkeypatch, gla_scan, "gsa_passes")
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    log_alpha = torch.nn.functional.logsigmoid(r(B, T, H, M) * (4 if case == "sharp" else 1)) / 2
    ins = [r(B, T, H, K) * (30 if case == "sharp" else 1), r(B, T, H, K), r(B, T, H, V),
           -torch.expm1(log_alpha), log_alpha]
    if case != "no state":
        ins += [r(B, H, K, M), r(B, H, M, V)]
    ins = [t.requires_grad_() for t in ins]

    def run():
        q, k, v, s, la, *state = ins
        o, (hk, hv) = gated_slot_attention(q, k, v, s, la, initial_state=state or None,
                                           chunk_size=16)
        return outputs_and_grads([o] if case == "o only" else [o, hk, hv], ins)

    got, want = native_vs_torch(run, threads)
    assert n[0] == 1
    names = ["o"] if case == "o only" else ["o", "hk", "hv"]
    names += ["q", "k", "v", "s", "log_alpha", "hk0", "hv0"][:len(want) - len(names)]
    if case == "no state" and T == 1:
        # a single step from the zero state: log alpha only decays that zero, so its gradient
        # is 0 up to rounding on both sides; held to tol of the other gradients' scale
        i = names.index("log_alpha")
        scale = max(w.abs().max().item() for w in want[names.index("q"):])
        assert (got[i] - want[i]).abs().max().item() <= tol * scale
        got, want, names = (x[:i] + x[i + 1:] for x in (list(got), list(want), names))
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("empty", [True, False])
def test_lightnet_gate_scan_matches_logcumsumexp(monkeypatch, dtype, tol, empty):
    n = counter(monkeypatch, gla_scan, "additive_gate")
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(3, 11, 2, 13, generator=gen, dtype=dtype)).requires_grad_()
    z0 = (torch.full((3, 2, 13), float("-inf"), dtype=dtype) if empty
          else torch.randn(3, 2, 13, generator=gen, dtype=dtype)).requires_grad_()
    got = outputs_and_grads(list(additive_gate(x, z0)), [x, z0])
    with backend.force("torch"):
        want = outputs_and_grads(list(additive_gate(x, z0)), [x, z0])
    assert n[0] == 1
    assert_close(got, want, ["k", "g", "z_T", "x", "z0"], tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("normalizer", [8.0, 1.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_gsa_slot_gate_matches_torch(monkeypatch, dtype, tol, normalizer, threads):
    """gsa's forget gate in C (log alpha = logsigmoid(f) / n and s = -expm1(log alpha), both
    sides of the series' switch at log alpha = -1/2, and f past exp's clamp) against its
    PyTorch form in layers/gsa.py, values and gradients."""
    from rnnzoo import create

    n = counter(monkeypatch, gla_scan, "slot_gate")
    layer = create("gsa", d_model=16, num_heads=2, num_slots=5).to(dtype)
    layer.gate_logit_normalizer = normalizer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 16, generator=gen, dtype=dtype)
    with torch.no_grad():  # pre-activations from -15 to 15, and two far past exp's range
        layer.f_proj.weight.mul_(40)
        layer.f_proj.weight[0, :] = 0
        layer.f_proj.weight[1, :] = 0
        layer.f_proj.weight[0, 0] = 1e3
        layer.f_proj.weight[1, 0] = -1e3
    x.requires_grad_()
    with threads_(threads):
        got = outputs_and_grads(list(layer.op_inputs(x)[3:]), [x])
    with backend.force("torch"):
        want = outputs_and_grads(list(layer.op_inputs(x)[3:]), [x])
    assert n[0] == 1
    assert_close(got, want, ["s", "log_alpha", "x"], tol)


def test_gsa_slot_gate_small_s_relative():
    """s = 1 - alpha near 0 (f large) keeps its relative precision (expm1's series, not
    e^x - 1); float64, entry by entry."""
    f = torch.linspace(-3, 30, 301, dtype=torch.float64)
    la, s = gla_scan.slot_gate(gla_scan.load(), f, 8.0)
    want = -torch.expm1(torch.nn.functional.logsigmoid(f) / 8)
    assert ((s - want).abs() / want).max() < 1e-14


def _leaves2(*shapes, positive=()):
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(s, dtype=torch.float64, generator=g) + 0.2 if i in positive else
             torch.randn(s, dtype=torch.float64, generator=g)).requires_grad_()
            for i, s in enumerate(shapes)]


@pytest.mark.parametrize("empty", [True, False])
def test_additive_gate_second_derivative(empty):
    """Under create_graph=True _AdditiveGate's `twice` (layers.lightnet's PyTorch form replayed
    over the saved inputs) gives the second derivative of k, g and z_T in x (and z0 when it
    is finite), float64, against a central difference and the PyTorch form's own double
    backward; x a transposed view."""
    lib = gla_scan.load()
    if lib is None:
        pytest.skip("gla_scan does not build")
    xt, z0 = _leaves2((2, 3, 5, 4), (2, 3, 4))
    if empty:
        z0 = torch.full((2, 3, 4), float("-inf"), dtype=torch.float64)

    def native(xt, *z):
        return gla_scan.additive_gate(lib, xt.transpose(1, 2), *(z or (z0,)))

    def plain(xt, *z):
        return gla_scan._torch_additive_gate(xt.transpose(1, 2), *(z or (z0,)))

    inputs = [xt] if empty else [xt, z0]
    for a, b in zip(native(*inputs), plain(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, inputs, plain)


def test_slot_gate_second_derivative():
    """_SlotGate's `twice`: the second derivative of (log alpha, 1 - alpha) in f, float64."""
    lib = gla_scan.load()
    if lib is None:
        pytest.skip("gla_scan does not build")
    (ft,) = _leaves2((2, 5, 3))

    def native(ft):
        return gla_scan.slot_gate(lib, ft.transpose(1, 2), 8.0)

    def plain(ft):
        return gla_scan._torch_slot_gate(ft.transpose(1, 2), 1 / 8.0)

    for a, b in zip(native(ft), plain(ft)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, [ft], plain)


@pytest.mark.parametrize("bonus", [False, True])
def test_gla_second_derivative(bonus):
    """Under create_graph=True _NativeGLA's `twice` (the reference loop replayed over the saved
    inputs, ops.chunk.linear._gla_loop) gives the second derivative in q, k, v, g, S0 (and the
    bonus u), float64, against a central difference and the loop's own double backward; q a
    transposed view (the kernel reads a copy)."""
    lib = gla_scan.load()
    if lib is None:
        pytest.skip("gla_scan does not build")
    q, k, v, g, S0, *u = _inputs(torch.float64, 5, H=2, K=3, V=2, bonus=bonus)
    qt = q.detach().transpose(1, 2).requires_grad_()

    def native(qt, k, v, g, S0, *u):
        return gla_scan.gla(lib, qt.transpose(1, 2), k, v, g, S0, *(u or [None]), 0.7,
                            linear._gla_loop)

    def plain(qt, k, v, g, S0, *u):
        return linear._gla_loop(qt.transpose(1, 2), k, v, g, S0, *(u or [None]), 0.7)

    inputs = [qt, k, v, g, S0, *u]
    for a, b in zip(native(*inputs), plain(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, inputs, plain)


def test_gsa_passes_second_derivative():
    """Under create_graph=True _NativeGSA's `twice` (ops.gsa's recurrent loops replayed over
    the saved inputs, ops.gsa._loops) gives the second derivative in q, k, v, s, log alpha and
    both initial states, float64, against a central difference and the loops' own double
    backward."""
    from rnnzoo.ops import gsa
    lib = gla_scan.load()
    if lib is None:
        pytest.skip("gla_scan does not build")
    B, T, H, K, M, V = 1, 4, 2, 3, 2, 2
    q, k, v, f, hk0, hv0 = _leaves2((B, T, H, K), (B, T, H, K), (B, T, H, V), (B, T, H, M),
                                    (B, H, K, M), (B, H, M, V))
    la = torch.nn.functional.logsigmoid(f.detach()).requires_grad_()
    s = (-torch.expm1(la.detach())).requires_grad_()
    inputs = [q, k, v, s, la, hk0, hv0]

    def native(*t):
        return gla_scan.gsa_passes(lib, *t, 0.6, gsa._loops)

    def plain(*t):
        return gsa._loops(*t, 0.6)

    for a, b in zip(native(*inputs), plain(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, inputs, plain)
