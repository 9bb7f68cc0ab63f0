"""mamba3's fused rotation of C and B (`_Rotation`, its chunk mode): equal to layers.rotary.turn
through autograd on each tensor, for adjacent (SISO) and halves (MIMO) pairs, with only the
first n of the d_state / 2 pairs turned, in values and in the gradients of both tensors and of
the angles (summed over the ranks they broadcast across)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _twice import check_twice

from rnnzoo.layers.mamba3 import _Rotation
from rnnzoo.layers.rotary import turn


@pytest.mark.parametrize("pairs", ["adjacent", "halves"])
@pytest.mark.parametrize("n", [2, 4])
def test_rotation_equals_turn(pairs, n):
    gen = torch.Generator().manual_seed(0)
    B, T, R, H, N = 2, 5, 3, 2, 8
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    C, Bm, theta = r(B, T, R, H, N), r(B, T, R, H, N), 3 * r(B, T, 1, H, n)
    ins = [t.requires_grad_() for t in (theta, C, Bm)]
    wC, wB = r(B, T, R, H, N), r(B, T, R, H, N)

    def grads(Cr, Br):
        return [Cr, Br, *torch.autograd.grad((Cr * wC).sum() + (Br * wB).sum(), ins)]

    got = grads(*_Rotation.apply(theta, pairs, C, Bm))
    full = F.pad(theta, (0, N // 2 - n))
    want = grads(turn(C, full, pairs), turn(Bm, full, pairs))
    for i, (p, w) in enumerate(zip(got, want)):
        assert p.shape == w.shape and (p - w).abs().max() < 1e-12 * w.abs().max(), i


@pytest.mark.parametrize("pairs", ["adjacent", "halves"])
def test_rotation_traced_equals_eager(pairs, monkeypatch):
    """Under torch.compile (dynamo refuses the eager path's strided out=) the rotation is
    built by cat: the same values."""
    gen = torch.Generator().manual_seed(0)
    x, theta = torch.randn(2, 3, 1, 2, 8, generator=gen), torch.randn(2, 3, 1, 2, 3, generator=gen)
    e = (torch.complex(theta.cos(), theta.sin()) if pairs == "adjacent"
         else (theta.cos(), theta.sin()))
    eager = _Rotation._turn(x, e, 3, pairs)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert (_Rotation._turn(x, e, 3, pairs) - eager).abs().max() < 1e-6



@pytest.mark.parametrize("pairs", ["adjacent", "halves"])
def test_rotation_second_derivative(pairs):
    """create_graph runs `_Rotation.twice` (autograd through rotary.turn)."""
    g = torch.Generator().manual_seed(0)
    theta, C, B = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                   for s in ((2, 3, 1, 2, 1), (2, 3, 2, 2, 4), (2, 3, 2, 2, 4)))
    check_twice(lambda t, c, b: _Rotation.apply(t, pairs, c, b), (theta, C, B))
