"""ops.native.token_mix (RWKV's six token-shift mixes in C) equals torch's addcmuls, values
and gradients (an unused mix included), and the rwkv7 layer runs it on the CPU."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads
from _second_order import second_order

import rnnzoo
from rnnzoo.ops.native import token_mix


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_addcmul_values_and_grads(dtype):
    g = torch.Generator().manual_seed(0)
    x, step = (torch.randn(3, 7, 5, generator=g, dtype=dtype).requires_grad_() for _ in range(2))
    mu = torch.rand(6, 5, generator=g, dtype=dtype).requires_grad_()
    with threads(2):
        got = token_mix.token_mix(token_mix.load(), x, step, mu)
        got = outputs_and_grads([o for i, o in enumerate(got) if i != 2], (x, step, mu))
    want = outputs_and_grads([torch.addcmul(x, step, m) for i, m in enumerate(mu) if i != 2],
                             (x, step, mu))
    assert_close(got, want, ["x0", "x1", "x3", "x4", "x5", "dx", "dstep", "dmu"],
                 1e-14 if dtype == torch.float64 else 1e-6)


def test_rwkv7_layer_runs_it(monkeypatch):
    calls = counter(monkeypatch, token_mix, "token_mix")
    layer = rnnzoo.create("rwkv7", d_model=8, num_heads=2, low_rank=2)
    layer(torch.randn(2, 5, 8))
    assert calls[0] == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("rows,R,D", [(1, 3, 9), (139, 32, 128), (70, 5, 20)])
def test_ddlerp_mixes_and_grads_equal_torch(dtype, nthreads, rows, R, D):
    """RWKV-6's mixes x + step o (low_m up_m + mu_m) and their backward (rows past one
    64-row block and not a multiple of it, ranks and widths off the tile widths) against
    torch's products and autograd."""
    g = torch.Generator().manual_seed(1)
    x, step = (torch.randn(rows, D, generator=g, dtype=dtype) for _ in range(2))
    low = torch.randn(rows, 5, R, generator=g, dtype=dtype)
    up, mu = torch.randn(5, R, D, generator=g, dtype=dtype), torch.randn(5, D, generator=g, dtype=dtype)
    gm = [torch.randn(rows, D, generator=g, dtype=dtype) for _ in range(5)]
    ins = [t.clone().requires_grad_() for t in (x, step, low, up, mu)]
    xr, sr, lr, ur, mr = ins
    cs = [lr[:, m] @ ur[m] + mr[m] for m in range(5)]
    want = torch.stack([torch.addcmul(xr, sr, t) for t in cs])
    want_d = torch.autograd.grad(want, ins, torch.stack(gm))
    lib = token_mix.load()
    with threads(nthreads):
        got, c = token_mix.ddlerp_mixes(lib, x, step, low, up, mu)
        got_d = token_mix.ddlerp_grads(lib, gm, c, step, low, up)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert_close([got, c, *got_d], [want, torch.stack(cs), *want_d],
                 ["mixes", "c", "dx", "dstep", "dlow", "dup", "dmu"], tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("rows,R,D,np_", [(1, 3, 9, 4), (139, 32, 128, 4), (70, 5, 20, 2)])
def test_ddlerp_projections_equal_torch(dtype, nthreads, rows, R, D, np_):
    """The mixes with the last np_ projected in the same blocks (proj_j = mix_{5-np_+j} W_j^T)
    and the backward taking the projections' gradients in those mixes' places: values and
    the gradients of x, step, low, up, mu and W against torch's products and autograd."""
    g = torch.Generator().manual_seed(3)
    x, step = (torch.randn(rows, D, generator=g, dtype=dtype) for _ in range(2))
    low = torch.randn(rows, 5, R, generator=g, dtype=dtype)
    up, mu = torch.randn(5, R, D, generator=g, dtype=dtype), torch.randn(5, D, generator=g, dtype=dtype)
    W = torch.randn(np_, D, D, generator=g, dtype=dtype) / D ** 0.5
    gm = [torch.randn(rows, D, generator=g, dtype=dtype) for _ in range(5)]
    ins = [t.clone().requires_grad_() for t in (x, step, low, up, mu, W)]
    xr, sr, lr, ur, mr, wr = ins
    mixes = [torch.addcmul(xr, sr, lr[:, m] @ ur[m] + mr[m]) for m in range(5)]
    proj = [mixes[5 - np_ + j] @ wr[j].T for j in range(np_)]
    outs = mixes[:5 - np_] + proj
    want = [torch.stack(mixes), torch.stack(proj)]
    want_d = torch.autograd.grad(outs, ins, gm)
    lib = token_mix.load()
    with threads(nthreads):
        got, c, got_p = token_mix.ddlerp_mixes(lib, x, step, low, up, mu, W)
        got_d = token_mix.ddlerp_grads(lib, gm, c, step, low, up, W, got)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert_close([got, got_p, *got_d], [w.detach() for w in want] + list(want_d),
                 ["mixes", "proj", "dx", "dstep", "dlow", "dup", "dmu", "dW"], tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("B,T", [(1, 1), (3, 7)])
@pytest.mark.parametrize("only", [None, "step", "xx"])
def test_shift_mix_equals_torch(dtype, nthreads, B, T, only):
    """RWKV-6's token shift and first mix, values and the gradients of x, x_last and mu (also
    with one of the two outputs unused) against torch's cat, sub and addcmul."""
    g = torch.Generator().manual_seed(2)
    ins = [torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
           for s in ((B, T, 5), (B, 5), (5,))]
    x, x_last, mu = ins
    step = torch.cat([x_last[:, None], x[:, :-1]], 1) - x
    want = [step, torch.addcmul(x, step, mu)]
    with threads(nthreads):
        got = list(token_mix.shift_mix(token_mix.load(), x, x_last, mu))
        keep = [i for i, n in enumerate(["step", "xx"]) if only in (None, n)]
        wrt = ins if 1 in keep else ins[:2]  # mu is unused without xx
        got = outputs_and_grads([got[i] for i in keep], wrt)
    want = outputs_and_grads([want[i] for i in keep], wrt)
    assert_close(got, want, [f"out{i}" for i in keep] + ["dx", "dx_last", "dmu"][:len(wrt)],
                 1e-14 if dtype == torch.float64 else 1e-6)


def test_rwkv6_layer_runs_the_ddlerp_kernels(monkeypatch):
    calls = counter(monkeypatch, token_mix, "ddlerp_mixes", "ddlerp_grads", "shift_mix")
    layer = rnnzoo.create("rwkv6", d_model=8, head_dim=4, mix_rank=2, decay_rank=2)
    layer(torch.randn(2, 5, 8, requires_grad=True))[0].sum().backward()
    assert calls[0] == 3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", [(1,), (139, 5), (3, 7, 20)])
def test_tanh_equals_torch(dtype, nthreads, shape):
    """token_mix.tanh (exp.h's tanh in C): values over a wide range, the gradient and the
    gradient's gradient against torch.tanh; the values at +-inf, nan, +-1e4 and 1e-30; small
    inputs to a relative 4 ulp (1 - 2 / (e^{2x} + 1) alone gives 0 for 1e-8)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 4).requires_grad_()
    with threads(nthreads):
        y = token_mix.tanh(token_mix.load(), x)
        (dx,) = torch.autograd.grad(y, x, torch.randn(shape, generator=g, dtype=dtype),
                                    create_graph=True)
        got = [y, dx, *torch.autograd.grad(dx.square().sum(), x)]
    g = torch.Generator().manual_seed(3)
    torch.randn(shape, generator=g, dtype=dtype)
    y = torch.tanh(x)
    (dx,) = torch.autograd.grad(y, x, torch.randn(shape, generator=g, dtype=dtype),
                                create_graph=True)
    want = [y, dx, *torch.autograd.grad(dx.square().sum(), x)]
    assert_close(got, want, ["y", "dx", "ddx"], 1e-14 if dtype == torch.float64 else 1e-6)
    edge = torch.tensor([float("inf"), -float("inf"), float("nan"), 1e4, -1e4, 1e-30, 0.0],
                        dtype=dtype)
    got = token_mix.tanh(token_mix.load(), edge)
    torch.testing.assert_close(got, torch.tanh(edge), equal_nan=True, rtol=0, atol=1e-7)
    small = torch.logspace(-12, 0, 301, dtype=dtype)
    small = torch.cat([small, -small])
    want = torch.tanh(small.double())
    rel = ((token_mix.tanh(token_mix.load(), small).double() - want) / want).abs().max()
    assert rel < 4 * torch.finfo(dtype).eps


def test_rwkv6_layer_runs_the_tanh_kernel(monkeypatch):
    calls = counter(monkeypatch, token_mix, "tanh")
    layer = rnnzoo.create("rwkv6", d_model=8, head_dim=4, mix_rank=2, decay_rank=2)
    layer(torch.randn(2, 5, 8))
    assert calls[0] == 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", [(1,), (139, 5), (3, 7, 20)])
def test_negexp_equals_torch(dtype, nthreads, shape):
    """token_mix.negexp (-exp in C): values over [-20, 20] and the gradient against
    -torch.exp; near and past the largest finite exp, +-inf, nan (equal); below exp.h's clamp
    the smallest normal where torch's is subnormal or 0 (absolute 1e-37)."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 6).clamp(-20, 20).requires_grad_()
    with threads(nthreads):
        got = outputs_and_grads([token_mix.negexp(token_mix.load(), x)], [x])
    want = outputs_and_grads([-torch.exp(x)], [x])
    assert_close(got, want, ["y", "dx"], 1e-14 if dtype == torch.float64 else 1e-6)
    big = 709.7 if dtype == torch.float64 else 88.7
    edge = torch.tensor([float("inf"), float("nan"), 88.1, 88.7, 88.73, big, 709.8],
                        dtype=dtype)
    torch.testing.assert_close(token_mix.negexp(token_mix.load(), edge), -torch.exp(edge),
                               equal_nan=True, rtol=1e-6, atol=0)
    low = torch.tensor([-float("inf"), -100.0, -800.0], dtype=dtype)
    torch.testing.assert_close(token_mix.negexp(token_mix.load(), low), -torch.exp(low),
                               rtol=0, atol=1e-37)


def test_rwkv6_layer_runs_the_negexp_kernel(monkeypatch):
    calls = counter(monkeypatch, token_mix, "negexp")
    layer = rnnzoo.create("rwkv6", d_model=8, head_dim=4, mix_rank=2, decay_rank=2)
    layer(torch.randn(2, 5, 8))
    assert calls[0] == 1


def _leaves(*shapes):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]


@pytest.mark.parametrize("op", ["token_mix", "shift", "bonus", "keys"])
def test_second_derivative(op):
    """Under create_graph=True the nodes' `twice` (their PyTorch forms replayed over the
    saved inputs) give the second derivative in every tensor input, float64, against a
    central difference and the PyTorch form's own double backward; the first input a
    transposed view."""
    lib = token_mix.load()
    if lib is None:
        pytest.skip("token_mix does not build")
    T = lambda t: t.transpose(0, 1)  # noqa: E731
    if op == "token_mix":
        ins, linear = _leaves((5, 2, 4), (2, 5, 4), (3, 4)), (0,)
        native = lambda x, s, mu: token_mix.token_mix(lib, T(x), s, mu)  # noqa: E731
        plain = lambda x, s, mu: token_mix._torch_token_mix(T(x), s, mu)  # noqa: E731
    elif op == "shift":
        ins, linear = _leaves((5, 2, 4), (2, 4), (4,)), ()
        native = lambda x, xl, mu: token_mix.shift_mix(lib, T(x), xl, mu)  # noqa: E731
        plain = lambda x, xl, mu: token_mix._torch_shift(T(x), xl, mu)  # noqa: E731
    elif op == "bonus":
        ins, linear = _leaves((2, 6, 4), (2, 4), (2, 4), (6, 2, 3), (6, 2, 3), (6, 2, 4),
                              (6, 2, 4), (2, 3)), ()
        native = lambda x, *t: token_mix.bonus_gate(lib, T(x), *t[:2], 1e-3, *t[2:])  # noqa: E731
        plain = lambda x, *t: token_mix._torch_bonus(T(x), *t[:2], 1e-3, *t[2:])  # noqa: E731
    else:
        ins, linear = _leaves((8, 6), (6, 8), (6, 8), (8,), (8,)), ()
        native = lambda k, *t: token_mix.rwkv7_keys(lib, T(k), *t, -0.6, 1e-12, 2)  # noqa: E731
        plain = lambda k, *t: token_mix._torch_keys(T(k), *t, -0.6, 1e-12, 2)  # noqa: E731
    got, want = native(*ins), plain(*ins)
    for a, b in zip(*((o if isinstance(o, tuple) else (o,)) for o in (got, want))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, ins, plain, linear=linear)
