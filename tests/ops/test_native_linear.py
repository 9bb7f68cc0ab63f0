"""ops.native.linear: x W^T + b through oneDNN on the CPU in float32 equals F.linear, values
and the gradients of x, W and b (both orders of the weight gradient: out > in and out < in),
a 3-D and a non-contiguous input, a second derivative; float64 and backend.force("torch") keep
F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, outputs_and_grads

from rnnzoo.ops import backend
from rnnzoo.ops.native import linear as native_linear

pytestmark = pytest.mark.skipif(native_linear._LP is None, reason="torch without oneDNN's linear")


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, native_linear._Linear, "apply")


@pytest.mark.parametrize("out,inp,bias", [(13, 7, True), (5, 11, False), (4, 64, True)])
@pytest.mark.parametrize("strided", [False, True])
def test_linear_matches_f_linear(calls, out, inp, bias, strided):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 2 * inp if strided else inp, generator=g)
    x = (x[..., ::2] if strided else x).requires_grad_()
    w = torch.randn(out, inp, generator=g, requires_grad=True)
    b = torch.randn(out, generator=g, requires_grad=True) if bias else None
    ins = [t for t in (x, w, b) if t is not None]
    got = outputs_and_grads([native_linear.linear(x, w, b)], ins)
    assert calls[0] == 1
    want = outputs_and_grads([F.linear(x, w, b)], ins)
    assert_close(got, want, ["y", "x", "w", "b"], 1e-5)


def test_linear_keeps_f_linear_off_float32(calls):
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(native_linear.linear(x, w), F.linear(x, w))
    with backend.force("torch"):
        native_linear.linear(x.float(), w.float())
    assert calls[0] == 0


def test_linear_second_derivative(calls):
    """A gradient taken with create_graph is differentiable again (as F.linear's)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    w = torch.randn(4, 3, generator=g, requires_grad=True)

    def second(f):
        (dx,) = torch.autograd.grad(f(x, w).square().sum(), x, create_graph=True)
        return torch.autograd.grad((dx * dx).sum(), w)[0]

    got = second(native_linear.linear)
    assert calls[0] == 1
    torch.testing.assert_close(got, second(F.linear))


@pytest.mark.parametrize("G, K", [(12, 5), (5, 12), (7, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_grad_is_g_transposed_times_r(G, K, dtype):
    """weight_grad (oneDNN in float32, either order of the product) equals g^T r over all rows."""
    g, r = torch.randn(3, 11, G, dtype=dtype), torch.randn(3, 11, K, dtype=dtype)
    want = g.double().flatten(0, 1).T @ r.double().flatten(0, 1)
    got = native_linear.weight_grad(g, r)
    assert got.shape == (G, K) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_product_and_weight_grad_stay_differentiable_under_grad_mode():
    """Outside autograd, product (a b^T + bias) and weight_grad equal the matmul; with grad
    enabled (a create_graph backward) they are the matmul itself, so a second derivative
    flows through them (oneDNN's op has no derivative of its own)."""
    a, b, bias = torch.randn(6, 5), torch.randn(4, 5), torch.randn(4)
    with torch.no_grad():
        torch.testing.assert_close(native_linear.product(a, b, bias), a @ b.T + bias)
        torch.testing.assert_close(native_linear.product(a, b), a @ b.T)
    a.requires_grad_()
    for f in (lambda: native_linear.product(a, b, bias), lambda: native_linear.weight_grad(a, a)):
        (da,) = torch.autograd.grad(f().square().sum(), a)
        assert da.abs().sum() > 0


@pytest.fixture
def piece_calls(monkeypatch):
    return counter(monkeypatch, native_linear._Pieces, "apply")


@pytest.mark.parametrize("used", [(0, 1, 2), (1,), (0, 2), ()])
@pytest.mark.parametrize("strided", [False, True])
def test_linear_pieces_match_the_split_of_f_linear(monkeypatch, piece_calls, used, strided):
    """linear_pieces (one oneDNN product a piece, dense outputs) equals F.linear's output
    split, and so do the gradients of x and W, also when some pieces are not used (their rows
    of dW zero); each piece's dW by `_weight_grads` (a Linear's choice)."""
    wgs = counter(monkeypatch, native_linear, "_weight_grads")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 14 if strided else 7, generator=g)
    x = (x[..., ::2] if strided else x).requires_grad_()
    w = torch.randn(13, 7, generator=g, requires_grad=True)
    sizes = [4, 6, 3]
    got = native_linear.linear_pieces(x, w, sizes)
    assert piece_calls[0] == 1 and all(p.is_contiguous() for p in got)
    want = F.linear(x, w).split(sizes, -1)
    assert_close(got, want, ["y0", "y1", "y2"], 1e-5)
    if not used:
        return
    got = outputs_and_grads([got[i] for i in used], [x, w])
    assert wgs[0] == len(sizes)
    want = outputs_and_grads([want[i] for i in used], [x, w])
    assert_close(got, want, [*(f"y{i}" for i in used), "x", "w"], 1e-5)


def test_linear_pieces_second_derivative_and_fallback(piece_calls):
    """Under create_graph the pieces' backward is differentiable again (as F.linear's);
    float64 keeps F.linear's split."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    w = torch.randn(6, 3, generator=g, requires_grad=True)

    def second(f):
        y0, _, y2 = f(x, w)
        (dx,) = torch.autograd.grad(y0.square().sum() + y2.sum(), x, create_graph=True)
        return torch.autograd.grad((dx * dx).sum(), w)[0]

    got = second(lambda x, w: native_linear.linear_pieces(x, w, [2, 1, 3]))
    assert piece_calls[0] == 1
    torch.testing.assert_close(got, second(lambda x, w: F.linear(x, w).split([2, 1, 3], -1)))
    xd, wd = x.double(), w.double()
    pieces = native_linear.linear_pieces(xd, wd, [2, 4])
    for p, q in zip(pieces, F.linear(xd, wd).split([2, 4], -1)):
        assert torch.equal(p, q)
    assert piece_calls[0] == 1
