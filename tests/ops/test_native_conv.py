"""ops.native.conv: the C short convolution (SiLU fused) against the PyTorch path of
layers.conv.ShortConv: outputs, new conv state and every gradient (x, state, weight, bias),
float64 to 1e-10 and float32 to 1e-5; streaming in two pieces; the mask keeps torch."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_
from _second_order import second_order

from rnnzoo.layers.conv import ShortConv
from rnnzoo.ops import backend
from rnnzoo.ops.native import conv as native_conv


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, native_conv, "short_conv")


def _setup(b, T, C, K, bias, silu, dtype):
    torch.manual_seed(0)
    m = ShortConv(C, K, bias=bias, silu=silu).to(dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, T, C, generator=g, dtype=dtype).requires_grad_()
    state = torch.randn(b, K - 1, C, generator=g, dtype=dtype).requires_grad_()
    return m, x, state


def _run(m, x, state):
    return outputs_and_grads(m(x, state), [x, state, *m.parameters()])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("b,T,C,K,bias,silu", [
    (1, 1, 5, 4, True, True), (3, 7, 20, 3, False, True), (3, 33, 17, 4, True, False),
    (1, 2, 9, 4, True, True),  # T < K - 1: the new state keeps part of the old
    (2, 5, 8, 1, True, True),  # K = 1: no state
    (2, 6, 150, 4, False, True)])  # C past conv.c's runs of 64 (SILU_RUN): two and a tail
@pytest.mark.parametrize("threads", [1, 2])
def test_native_conv_matches_torch(calls, dtype, tol, b, T, C, K, bias, silu, threads):
    with threads_(threads):
        m, x, state = _setup(b, T, C, K, bias, silu, dtype)
        got = _run(m, x, state)
        assert calls[0] == 1
        with backend.force("torch"):
            want = _run(m, x, state)
    assert calls[0] == 1
    assert_close(got, want, ["y", "state", "x", "state0", "weight", "bias"], tol)


def test_native_conv_streams(calls):
    """Two pieces, the second from the first's state, give the whole sequence's outputs."""
    m, x, state = _setup(2, 11, 6, 4, True, True, torch.float64)
    with torch.no_grad():
        y, s = m(x, state)
        y1, s1 = m(x[:, :5], state)
        y2, s2 = m(x[:, 5:], s1)
    assert calls[0] == 3
    assert (torch.cat([y1, y2], 1) - y).abs().max() < 1e-12 and torch.equal(s2, s)


def test_native_conv_not_with_a_mask_or_half(calls):
    m, x, state = _setup(2, 6, 4, 3, True, True, torch.float32)
    mask = torch.ones(2, 6, 1, dtype=torch.bool)
    m(x, state, mask)
    m.half()(x.half(), state.half())
    assert calls[0] == 0


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sqrt_eps", [False, True])
@pytest.mark.parametrize("silu", [True, False])
def test_native_conv_with_the_l2_norm_of_its_leading_groups(dtype, tol, sqrt_eps, silu):
    """short_conv(..., norm_groups, group): the C conv with the delta layers' l2norm of q and
    k fused, against ShortConv then l2norm; one group held at zero takes the floor."""
    from rnnzoo.layers._delta_block import l2norm
    m, x, state = _setup(2, 9, 17, 4, True, silu, dtype)   # 3 groups of 5, then 2 plain channels
    with torch.no_grad():
        x[:, :, 5:10] = 0
        state[:, :, 5:10] = 0
        m.bias[5:10] = 0
    wrt = [x, state, *m.parameters()]

    def torch_form():
        y, s = m(x, state)
        return torch.cat([l2norm(y[..., :15].unflatten(-1, (3, 5)), sqrt_eps).flatten(-2),
                          y[..., 15:]], -1), s

    with backend.force("torch"):
        want = outputs_and_grads(torch_form(), wrt)
    lib = native_conv.load()
    got = outputs_and_grads(native_conv.short_conv(lib, x, m.weight, m.bias, state, silu, 3, 5,
                                                   sqrt_eps), wrt)
    assert_close(got, want, ["y", "state", "x", "state0", "weight", "bias"], tol)


@pytest.mark.parametrize("norm_groups", [3, 0])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_conv_in_three_pieces(norm_groups, threads):
    """short_conv(..., splits): y as three contiguous pieces (q, k, v of the delta layers),
    equal to the whole y's split (outputs, new state and every gradient, float64); the
    middle piece unused (its gradient None) counts as zeros; widths checked."""
    m, x, state = _setup(3, 9, 17, 4, True, True, torch.float64)
    wrt, lib = [x, state, *m.parameters()], native_conv.load()
    run = lambda sp=None: native_conv.short_conv(lib, x, m.weight, m.bias, state,  # noqa: E731
                                                 True, norm_groups, 5, False, sp)
    with threads_(threads):
        (a, b, c), s = run((5, 10, 2))
        assert all(t.is_contiguous() for t in (a, b, c))
        got = outputs_and_grads((a, c, s), wrt)
        y, s = run()
    want = outputs_and_grads((y[..., :5], y[..., 15:], s), wrt)
    assert_close(got, want, ["q", "v", "state", "x", "state0", "weight", "bias"], 1e-12)
    assert torch.equal(b, y[..., 5:15])
    with pytest.raises(ValueError, match="splits"):
        run((5, 10, 3))


@pytest.mark.parametrize("T", [8, 9])
def test_native_conv_in_three_pieces_across_a_norm_group(T):
    """splits whose boundary falls inside a norm group (the backward then reads dy through a
    scratch row, not in place; the delta layers' pieces are whole heads): equal to the whole
    y's split, float64, even and odd T (the backward takes steps in pairs)."""
    m, x, state = _setup(2, T, 17, 4, True, True, torch.float64)
    wrt, lib = [x, state, *m.parameters()], native_conv.load()
    run = lambda sp=None: native_conv.short_conv(lib, x, m.weight, m.bias, state,  # noqa: E731
                                                 True, 3, 5, False, sp)
    (a, b, c), s = run((7, 6, 4))
    got = outputs_and_grads((a, b, c, s), wrt)
    y, s = run()
    want = outputs_and_grads((y[..., :7], y[..., 7:13], y[..., 13:], s), wrt)
    assert_close(got, want, ["q", "k", "v", "state", "x", "state0", "weight", "bias"], 1e-12)


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("T", [8, 9])
def test_native_conv_in_three_pieces_without_norms(silu, T):
    """splits without norms (mamba2's x, B, C): the backward reads each piece of dy in place
    in its one fused pass; equal to the whole y's split, float64, with and without the SiLU,
    even and odd T."""
    m, x, state = _setup(2, T, 17, 4, True, silu, torch.float64)
    wrt, lib = [x, state, *m.parameters()], native_conv.load()
    run = lambda sp=None: native_conv.short_conv(lib, x, m.weight, m.bias, state,  # noqa: E731
                                                 silu, 0, 1, False, sp)
    (a, b, c), s = run((9, 3, 5))
    got = outputs_and_grads((a, b, c, s), wrt)
    y, s = run()
    want = outputs_and_grads((y[..., :9], y[..., 9:12], y[..., 12:], s), wrt)
    assert_close(got, want, ["x", "B", "C", "state", "x", "state0", "weight", "bias"], 1e-12)


@pytest.mark.parametrize("dtype,b,bias,tol", [(torch.float64, 1, True, 1e-10),
                                               (torch.float32, 2, False, 1e-5)])
@pytest.mark.parametrize("splits", [None, (64, 66, 926)])
def test_native_conv_streamed_outputs(dtype, b, bias, tol, splits):
    """A call whose rows hold >= 8 MB of y (conv.c's STREAM_MIN: T = 1024, C = 1056, 8.65 MB
    at one thread) writes y's rows and dx's with streaming stores, through a scratch row:
    outputs and every gradient against ShortConv then l2norm of the first 4 groups of 32,
    whole y and in pieces (the first piece's rows 32-byte aligned and streamed, the other two
    not: the memcpy fallback); with and without a bias."""
    from rnnzoo.layers._delta_block import l2norm
    m, x, state = _setup(b, 1024, 1056, 4, bias, True, dtype)
    wrt, lib = [x, state, *m.parameters()], native_conv.load()

    def torch_form():
        y, s = m(x, state)
        y = torch.cat([l2norm(y[..., :128].unflatten(-1, (4, 32))).flatten(-2), y[..., 128:]], -1)
        return (y,) if splits is None else y.split(splits, -1), s

    def flat(ys, s):
        return (*ys, s) if isinstance(ys, tuple) else (ys, s)

    with threads_(1):
        got = outputs_and_grads(flat(*native_conv.short_conv(lib, x, m.weight, m.bias, state,
                                                             True, 4, 32, False, splits)), wrt)
        with backend.force("torch"):
            want = outputs_and_grads(flat(*torch_form()), wrt)
    names = ["y"] * (1 if splits is None else 3) + ["state", "x", "state0", "weight",
                                                     "bias"][:1 + len(wrt)]
    assert len(got) == len(want) == len(names)
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("V", [64, 21, 5])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("used", ["both", "v", "x"])
def test_scaled_values(dtype, tol, V, threads, used):
    """scaled_values(x, u) = (x u, x) (mamba2's dt x and the skip's x): outputs and the
    gradients of x (both outputs' summed) and u from conv.c's one pass, against autograd on
    x * u[..., None]; V a multiple of the 16 lanes or not; only one output used."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 2, V, generator=g, dtype=dtype).requires_grad_()
    u = torch.rand(3, 7, 2, generator=g, dtype=dtype).requires_grad_()
    dv, dxs = (torch.randn(3, 7, 2, V, generator=g, dtype=dtype) for _ in range(2))

    def loss(v, x2):
        return ((v * dv).sum() if used != "x" else 0) + ((x2 * dxs).sum() if used != "v" else 0)
    with threads_(threads):
        v, x2 = native_conv.scaled_values(native_conv.load(), x, u)
        got = [v.detach(), x2.detach(), *torch.autograd.grad(loss(v, x2), [x, u],
                                                              allow_unused=True)]
    want_v = x * u[..., None]
    want = [want_v.detach(), x.detach(), *torch.autograd.grad(loss(want_v, x), [x, u],
                                                              allow_unused=True)]
    if used == "x":  # u's gradient: none, or zeros
        assert got[3] is None or not got[3].any()
        got, want = got[:3], want[:3]
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= tol * (1 + b.abs().max())


def test_scaled_values_double_backward():
    """under create_graph the backward is differentiable (torch ops, not the C pass)."""
    x = torch.randn(2, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    u = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, u: native_conv.scaled_values(native_conv.load(), x, u), (x, u))
    assert torch.autograd.gradgradcheck(
        lambda x, u: native_conv.scaled_values(native_conv.load(), x, u), (x, u))


@pytest.mark.parametrize("silu,nn,sqrt_eps,splits,bias", [(True, 0, False, None, True),
                                                          (False, 0, False, None, False),
                                                          (True, 2, False, (4, 4, 6), True),
                                                          (True, 3, True, (5, 5, 4), False)])
def test_native_conv_second_derivative(silu, nn, sqrt_eps, splits, bias):
    """Under create_graph=True _NativeConv's `twice` (its PyTorch form replayed over the saved
    inputs) gives the second derivative in x, weight, bias and state, float64, against a
    central difference and the PyTorch form's own double backward (conv, SiLU, the l2 norm
    of the leading groups, the three pieces)."""
    lib = native_conv.load()
    if lib is None:
        pytest.skip("conv does not build")
    C, K, G = 14, 4, 3
    g = torch.Generator().manual_seed(4)
    x, w, b, st = (torch.randn(s, dtype=torch.float64, generator=g).requires_grad_()
                   for s in ((2, 5, C), (C, K), (C,), (2, K - 1, C)))
    inputs = [x, w, st] + ([b] if bias else [])

    def run(f):
        return lambda x, w, st, b=None: f(x, w, b, st, silu, nn, G, sqrt_eps, splits)

    native = run(lambda *a: native_conv.short_conv(lib, *a[:5], *a[5:])[0])
    plain = run(native_conv._torch_conv)
    for a, b_ in zip(*((o if splits else (o,)) for o in (native(*inputs), plain(*inputs)))):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)
    with threads_(2):
        second_order(native, inputs, plain)
