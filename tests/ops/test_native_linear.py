"""ops.native.linear: x W^T + b through oneDNN on the CPU in float32 equals F.linear, values
and the gradients of x, W and b (both orders of the weight gradient: out > in and out < in),
a 3-D and a non-contiguous input; float64 and backend.force("torch") keep F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, outputs_and_grads

from rnnzoo.ops import backend
from rnnzoo.ops.native import linear as native_linear

pytestmark = pytest.mark.skipif(native_linear._LP is None, reason="torch without oneDNN's linear")


@pytest.fixture
def calls(monkeypatch):
    n = [0]
    real = native_linear._Linear.apply

    def counted(*a):
        n[0] += 1
        return real(*a)
    monkeypatch.setattr(native_linear._Linear, "apply", counted)
    return n


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
