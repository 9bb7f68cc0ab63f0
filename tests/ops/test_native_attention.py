"""ops.native.attention under create_graph=True: _CausalHeads's `twice` (its PyTorch form
replayed over the saved inputs), and _Rope's and _Heads's (the turn back in PyTorch, linear
in the incoming gradient) give the second derivative (first order and forward against the
layers' PyTorch paths: tests/layers/test_attention_*.py)."""

from __future__ import annotations

import pytest
import torch
from _second_order import second_order

from rnnzoo.ops.native import attention as na


def _leaves(*shapes):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]


@pytest.fixture
def lib():
    lib = na.load()
    if lib is None:
        pytest.skip("attention does not build")
    return lib


@pytest.mark.parametrize("bias", [True, False])
def test_causal_heads_second_derivative(lib, bias):
    """float64, q, k, v (and the key bias) against a central difference and the PyTorch
    form's own double backward; q a transposed view."""
    ins = _leaves((2, 5, 2, 3), (2, 2, 5, 3), (2, 2, 5, 4), (2, 2, 5))[:4 if bias else 3]

    def native(qt, k, v, b=None):
        return na.causal_softmax_attention(lib, qt.transpose(1, 2), k, v, b)

    def plain(qt, k, v, b=None):
        return na._torch_causal(qt.transpose(1, 2), k, v, b)

    torch.testing.assert_close(native(*ins), plain(*ins), rtol=1e-12, atol=1e-12)
    second_order(native, ins, plain)


def _angles(B, T, half):
    a = torch.randn(B, T, half, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return a.cos(), a.sin()


def test_rope_second_derivative(lib):
    """The rotation is linear in x: its second derivative shows through a nonlinearity
    after it (tanh), whose gradient, the rope's incoming one, depends on x."""
    (x,) = _leaves((2, 5, 2, 6))
    cos, sin = _angles(2, 5, 2)

    def native(x):
        return na.rope(lib, x, cos, sin).tanh()

    def plain(x):
        return na._torch_rope(x, cos, sin).tanh()

    torch.testing.assert_close(native(x), plain(x), rtol=1e-12, atol=1e-12)
    second_order(native, [x], plain)


def test_heads_second_derivative(lib):
    """q, k turned and q scaled, v copied, from the fused projection, through tanh."""
    B, T, H, D = 2, 5, 2, 4
    (qkv,) = _leaves((B, T, 3 * H * D))
    cos, sin = _angles(B, T, 1)

    def native(qkv):
        return tuple(t.tanh() for t in na.heads(lib, qkv, H, cos, sin, 0.5))

    def plain(qkv):
        q, k, v = qkv.view(B, T, 3, H, D).unbind(2)
        return tuple(t.transpose(1, 2).tanh() for t in (na._torch_rope(q, cos, sin, 0.5),
                                                         na._torch_rope(k, cos, sin), v))

    for a, b in zip(native(qkv), plain(qkv)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, [qkv], plain)


@pytest.mark.parametrize("shift,masked", [(0, False), (-1, False), (0, True)])
def test_stick_breaking_second_derivative(lib, shift, masked):
    """_StickBreakingHeads's (causal, shift 0 or -1) and _StickBreaking's (a mask) `twice`:
    the second derivative in q, k, v, float64, q a transposed view."""
    ins = _leaves((2, 5, 2, 3), (2, 2, 5, 3), (2, 2, 5, 4))
    i = torch.arange(5)
    visible = ((i[None, :] <= i[:, None]) & (i[None, :] != 1)).expand(2, 5, 5) if masked \
        else None

    def native(qt, k, v):
        return na.stick_breaking_attention(lib, qt.transpose(1, 2), k, v, visible, shift)

    def plain(qt, k, v):
        return na._torch_stick_breaking(qt.transpose(1, 2), k, v, visible, shift)

    torch.testing.assert_close(native(*ins), plain(*ins), rtol=1e-12, atol=1e-12)
    second_order(native, ins, plain)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("used", [(0, 1, 2), (0,), (1, 2), (2,)])
@pytest.mark.parametrize("threads", [1, 2])
def test_heads_first_order(lib, dtype, tol, used, threads):
    """heads' one pass over qkv's rows each way (attention.c's qkv_rope), partial rotary
    (R = 4 of D = 6), against the PyTorch split, turn and transpose, forward and the gradient
    in qkv, with some outputs unused (autograd's zeros); the kernel called with a gradient
    None writes zeros in its third (qkv filled with NaN before)."""
    B, T, H, D = 2, 7, 3, 6
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(B, T, 3 * H * D, dtype=dtype, generator=g).requires_grad_()
    a = torch.randn(B, T, 2, dtype=dtype, generator=g)
    cos, sin = a.cos(), a.sin()
    ws = [torch.randn(B, H, T, D, dtype=dtype, generator=g) for _ in range(3)]

    def plain(qkv):
        q, k, v = qkv.view(B, T, 3, H, D).unbind(2)
        return tuple(t.transpose(1, 2) for t in (na._torch_rope(q, cos, sin, 0.5),
                                                 na._torch_rope(k, cos, sin), v))

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = na.heads(lib, qkv, H, cos, sin, 0.5)
        want = plain(qkv)
        for a_, b_ in zip(got, want):
            torch.testing.assert_close(a_, b_, rtol=tol, atol=tol)
        dg, = torch.autograd.grad(sum((got[i] * ws[i]).sum() for i in used), qkv)
        dw, = torch.autograd.grad(sum((want[i] * ws[i]).sum() for i in used), qkv)
        gs = [ws[i] if i in used else None for i in range(3)]
        out = torch.full_like(qkv, float("nan")).detach()
        na._qkv_rope(lib, out, *gs, cos, sin, True, 0.5)
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(dg, dw, rtol=tol, atol=tol)
    torch.testing.assert_close(out, dw, rtol=tol, atol=tol)
