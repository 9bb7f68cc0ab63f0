"""ops.native.ttt_norm: the inner loss's gradient through the TTT layer norm in C against
ops.memory's PyTorch form (layer_norm, _layer_norm_grad) under backend.force("torch"): G and
the gradients of a weighted sum of G in z, the target and the norm's weight and bias (the
TTT loops' backward), float64 to 1e-11 and float32 to 1e-5, on two threads; odd shapes (one
batch row, one head, one row per block, a width not a multiple of the vector) and rows
whose spread is far below eps (the norm's std ~ sqrt(eps); float64 only: float32's rounding
of such rows moves G by ~1e-4 in either form)."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads
from _second_order import second_order

from rnnzoo.ops import backend, memory
from rnnzoo.ops.native import ttt_norm


def _inputs(shape, dtype, flat_rows=False):
    g = torch.Generator().manual_seed(0)
    B, H, M, K = shape
    z = 2 * torch.randn(shape, generator=g, dtype=dtype) + 0.5
    if flat_rows:  # a few rows nearly constant: their std is ~ sqrt(eps)
        z[:, :, 0] = 3.0 + 1e-5 * torch.randn(B, H, K, generator=g, dtype=dtype)
    t = torch.randn(shape, generator=g, dtype=dtype)
    w = 1 + 0.3 * torch.randn(H, K, generator=g, dtype=dtype)
    b = 0.2 * torch.randn(H, K, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (z, t, w, b)]


def _run(ins, eps):
    return outputs_and_grads([memory._norm_loss_grad(*ins, eps)], ins)


@pytest.mark.parametrize("shape,flat", [((3, 2, 5, 7), False), ((2, 4, 16, 32), True),
                                        ((1, 1, 1, 3), False), ((1, 3, 4, 33), True)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_native_norm_loss_grad_equals_torch(shape, flat, dtype, tol, monkeypatch):
    calls = counter(monkeypatch, ttt_norm, "norm_loss_grad")
    ins = _inputs(shape, dtype, flat and dtype == torch.float64)  # float32 can't hold them
    eps = 1e-6
    with threads(2):
        native = _run(ins, eps)
    assert calls[0] == 1
    with backend.force("torch"):
        ref = _run(ins, eps)
    assert calls[0] == 1                                                  # torch: no call
    assert_close(native, ref, ["G", "dz", "dt", "dw", "db"], tol)
    assert all(t.abs().max() > 1e-3 for t in native)


def test_torch_form_is_the_loss_gradient():
    """The reference itself: G is autograd's gradient of 1/2 |LN(z) w + b - t|^2 in z."""
    z, t, w, b = _inputs((2, 3, 4, 6), torch.float64)
    loss = 0.5 * ((memory.layer_norm(z, w[:, None], b[:, None], 1e-6)[0] - t) ** 2).sum()
    (want,) = torch.autograd.grad(loss, z)
    with backend.force("torch"):
        got = memory._norm_loss_grad(z, t, w, b, 1e-6)
    assert (got - want).abs().max() < 1e-12
    assert (memory._norm_loss_grad(z, t, w, b, 1e-6) - want).abs().max() < 1e-12


@pytest.mark.parametrize("shape", [(3, 7, 2, 5), (2, 33, 4, 32), (1, 1, 1, 8)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_native_inner_output_equals_torch(shape, dtype, tol, monkeypatch):
    """memory.inner_output, o = q + LN(z) w + b (the TTT layers' output), in C (ttt_norm.c's
    ttt_out_fwd / ttt_out_bwd) against its PyTorch form (F.layer_norm and addcmul): o and
    the gradients in q, z, w and b, on two threads; odd shapes (a width not a multiple of the
    vector, one row) and, in float64, rows close to their mean."""
    calls = counter(monkeypatch, ttt_norm, "inner_output")
    g = torch.Generator().manual_seed(0)
    H, K = shape[-2:]
    q = torch.randn(shape, generator=g, dtype=dtype)
    z = 3 * torch.randn(shape, generator=g, dtype=dtype) + 1
    if dtype == torch.float64:  # rows near constant: the norm's 1/std large (float32's
        z[:, 0] = 0.5 + 1e-3 * z[:, 0]  # rounding of such z moves o by ~1e-5 in either form)
    w = 1 + 0.3 * torch.randn(H, K, generator=g, dtype=dtype)
    b = 0.2 * torch.randn(H, K, generator=g, dtype=dtype)
    leaves = [x.requires_grad_() for x in (q, z, w, b)]
    with threads(2):
        got = outputs_and_grads([memory.inner_output(*leaves, 1e-6)], leaves)
    assert calls[0] == 1
    with backend.force("torch"):
        want = outputs_and_grads([memory.inner_output(*leaves, 1e-6)], leaves)
    assert calls[0] == 1
    assert_close(got, want, ["o", "dq", "dz", "dw", "db"], tol)


def _leaves(*shapes):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]


def test_norm_loss_grad_second_derivative():
    """Under create_graph=True _NormLossGrad's `twice` (ops.memory's PyTorch form replayed over
    the saved inputs) gives the second derivative in z, target, w and b, float64, against a
    central difference and the PyTorch form's own double backward; z a transposed view."""
    lib = ttt_norm.load()
    if lib is None:
        pytest.skip("ttt_norm does not build")
    zt, t, w, b = _leaves((2, 3, 2, 4), (2, 2, 3, 4), (2, 4), (2, 4))

    def native(zt, t, w, b):
        return ttt_norm.norm_loss_grad(lib, zt.transpose(1, 2), t, w, b, 1e-5,
                                       memory._norm_loss_grad_torch)

    def plain(zt, t, w, b):
        return memory._norm_loss_grad_torch(zt.transpose(1, 2), t, w, b, 1e-5)

    torch.testing.assert_close(native(zt, t, w, b), plain(zt, t, w, b), rtol=1e-12, atol=1e-12)
    with threads(2):
        second_order(native, [zt, t, w, b], plain)


def test_inner_output_second_derivative():
    """_InnerOutput's `twice`: the second derivative in q, z, w and b, float64."""
    lib = ttt_norm.load()
    if lib is None:
        pytest.skip("ttt_norm does not build")
    q, z, w, b = _leaves((2, 5, 2, 4), (2, 5, 2, 4), (2, 4), (2, 4))

    def native(q, z, w, b):
        return ttt_norm.inner_output(lib, q, z, w, b, 1e-5)

    def plain(q, z, w, b):
        return ttt_norm._torch_inner_output(1e-5, q, z, w, b)

    torch.testing.assert_close(native(q, z, w, b), plain(q, z, w, b), rtol=1e-12, atol=1e-12)
    with threads(2):
        second_order(native, [q, z, w, b], plain, linear=(0, 3))
