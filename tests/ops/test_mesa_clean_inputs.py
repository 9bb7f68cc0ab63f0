"""ops.mesa.mesa's native path checks its inputs with ops.finite.clean_inputs (one sum a
tensor): finite inputs take no zeroed copies and no NaN marks (finite_inputs not called), a
non-finite one the marking path as before; with the kernel not built the chunk form still
gets its marks. Each against the PyTorch chunk form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import counter

from rnnzoo.ops import backend, finite
from rnnzoo.ops import mesa as mesa_mod
from rnnzoo.ops.mesa import mesa
from rnnzoo.ops.native import mesa_scan


def _inputs(bad):
    gen = torch.Generator().manual_seed(7)
    B, T, H, K = 2, 11, 2, 4
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    lamb = torch.ones(H, K, dtype=torch.float64)
    if bad is not None:
        k[0, 6, 1, 2] = bad
    return q, k, v, g, beta, lamb


def _same(got, want):
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan())
        ok = ~b.isnan()
        assert (a[ok] - b[ok]).abs().max() < 1e-10


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")])
@pytest.mark.parametrize("built", [True, False])
def test_mesa_native_checks_by_sums(monkeypatch, bad, built):
    args = _inputs(bad)
    with backend.force("torch"):
        o, (HT, GT) = mesa(*args, cg_steps=4, chunk_size=4)
    want = [o, HT, GT]
    marks = [counter(monkeypatch, m, "finite_inputs") for m in (finite, mesa_mod)]
    kernel = counter(monkeypatch, mesa_scan, "mesa")
    if not built:
        monkeypatch.setattr(mesa_scan, "load", lambda: None)
    o, (HT, GT) = mesa(*args, cg_steps=4, chunk_size=4)
    assert kernel[0] == (1 if built else 0)
    # finite and built: no finite_inputs; non-finite: once (clean_inputs' fallback); not
    # built and finite: once, for the chunk form's marks
    assert marks[0][0] + marks[1][0] == (0 if bad is None and built else 1)
    _same([o, HT, GT], want)
    if bad is not None:
        assert o[0, :6].isfinite().all() and o[0, 6:].isnan().all() and o[1].isfinite().all()


def test_mesa_bfloat16_inputs_take_the_kernel(monkeypatch):
    """bfloat16 q, k, v, g, beta run in float32 (compute_dtype): the C recurrence takes them
    (as before the clean_inputs change, which asked about k, v, g, beta before their cast and
    sent bfloat16 to the chunk form), the same result as the float32 inputs' cast back."""
    q, k, v, g, beta, lamb = (t.float() for t in _inputs(None))
    half = [t.bfloat16() for t in (q, k, v, g, beta)]
    kernel = counter(monkeypatch, mesa_scan, "mesa")
    o, (HT, GT) = mesa(*half, lamb, cg_steps=4, chunk_size=4)
    assert kernel[0] == 1
    want, (HW, GW) = mesa(*(t.float() for t in half), lamb, cg_steps=4, chunk_size=4)
    assert o.dtype == torch.bfloat16 and torch.equal(o, want.bfloat16())
    assert torch.equal(HT, HW) and torch.equal(GT, GW)
