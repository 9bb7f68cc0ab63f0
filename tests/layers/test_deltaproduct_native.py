"""DeltaProduct's chunk mode on a CPU (layers/deltaproduct.py `_product`): the C recurrence
runs without clean_inputs' sums over its inputs, and a non-finite key, value, beta or gate
(found in the final state) sends the call to delta_product's marked path; a non-finite query
reaches its own output only. Checked against delta_product itself (the op the layer ran
before) and the layer's sequential reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.layers import deltaproduct as dp
from rnnzoo.ops.chunk import delta as chunk_delta
from rnnzoo.ops.native import delta_scan


def _count(monkeypatch, module, name):
    n = [0]
    real = getattr(module, name)

    def counted(*args, **kw):
        n[0] += 1
        return real(*args, **kw)
    monkeypatch.setattr(module, name, counted)
    return n


def _inputs(B=2, T=37, n=2, H=2, K=5, V=40, dtype=torch.float64, gated=True):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, n, H, K), dim=-1)
    beta = 1.5 * torch.rand(B, T, n, H, generator=gen, dtype=dtype)
    g = -0.3 * torch.rand(B, T, H, generator=gen, dtype=dtype) if gated else None
    return q, k, r(B, T, n, H, V), beta, g, r(B, H, K, V)


@pytest.mark.parametrize("gated", [True, False])
def test_product_takes_the_kernel_without_the_sums(monkeypatch, gated):
    """Finite inputs: one kernel call, no clean_inputs, no delta_product; results and every
    gradient equal delta_product's (float64)."""
    ins = [t if t is None else t.requires_grad_() for t in _inputs(gated=gated)]
    wrt = [t for t in ins if t is not None]
    want_o, want_S = chunk_delta.delta_product(*ins[:5], initial_state=ins[5], chunk_size=4)
    want = [want_o, want_S, *torch.autograd.grad((want_o.sum() + (want_S ** 2).sum()), wrt)]
    ran, sums, op = (_count(monkeypatch, delta_scan, "delta"),
                     _count(monkeypatch, chunk_delta, "clean_inputs"),
                     _count(monkeypatch, dp, "delta_product"))
    o, S = dp._product(*ins, chunk_size=4)
    got = [o, S, *torch.autograd.grad((o.sum() + (S ** 2).sum()), wrt)]
    assert (ran[0], sums[0], op[0]) == (1, 0, 0)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()


@pytest.mark.parametrize("which,fill", [("k", float("nan")), ("v", float("inf")),
                                        ("beta", float("nan")), ("g", float("inf")),
                                        ("v", -float("inf"))])
def test_nonfinite_state_input_takes_the_marked_path(monkeypatch, which, fill):
    """A non-finite key, value, beta or gate at token 6 of sequence 0: the final state shows
    it, the call ends in delta_product (its marks: outputs from token 6 on NaN), and the
    result is exactly delta_product's."""
    q, k, v, beta, g, S0 = _inputs()
    bad = dict(k=k, v=v, beta=beta, g=g)[which]
    bad[0, 6].view(-1)[0] = fill
    want_o, want_S = chunk_delta.delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=4)
    op = _count(monkeypatch, dp, "delta_product")
    o, S = dp._product(q, k, v, beta, g, S0, chunk_size=4)
    assert op[0] == 1
    assert torch.equal(o.isnan(), want_o.isnan()) and torch.equal(S.isnan(), want_S.isnan())
    assert bool(o[0, 6:].isnan().all()) and bool(o[0, :6].isfinite().all())
    assert torch.equal(o.nan_to_num(), want_o.nan_to_num())
    assert torch.equal(S.nan_to_num(), want_S.nan_to_num())


def test_nonfinite_query_reaches_its_own_output_only(monkeypatch):
    """A NaN query (head 1) at token 6 of sequence 0: no second run; that head's output is
    not finite (delta_product marks the whole token NaN), every other token's output and the
    state equal delta_product's."""
    q, k, v, beta, g, S0 = _inputs()
    q[0, 6, 1, 2] = float("nan")
    want_o, want_S = chunk_delta.delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=4)
    op = _count(monkeypatch, dp, "delta_product")
    o, S = dp._product(q, k, v, beta, g, S0, chunk_size=4)
    assert op[0] == 0
    assert not bool(o[0, 6, 1].isfinite().any())
    assert bool(want_o[0, 6].isnan().all())
    keep = torch.ones(o.shape[:2], dtype=torch.bool)
    keep[0, 6] = False
    assert (o[keep] - want_o[keep]).abs().max() <= 1e-12 * want_o[keep].abs().max()
    assert (S - want_S).abs().max() <= 1e-12 * want_S.abs().max()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_layer_chunk_mode_takes_the_kernel_and_matches_sequential(monkeypatch, dtype, tol):
    """The layer (n_h = 2, gated) in chunk mode: one kernel call a forward, no
    clean_inputs; output, state and the input gradient as the sequential reference's."""
    torch.manual_seed(0)
    layer = rnnzoo.create("deltaproduct", d_model=8, num_heads=2, head_dim=4).to(dtype)
    x = torch.randn(2, 21, 8, dtype=dtype, requires_grad=True)
    ys, ss = layer(x, mode="sequential")
    gs, = torch.autograd.grad(ys.sum() + ss[0].sum(), x)
    ran, sums = _count(monkeypatch, delta_scan, "delta"), _count(monkeypatch, chunk_delta, "clean_inputs")
    yc, sc = layer(x, mode="chunk")
    gc, = torch.autograd.grad(yc.sum() + sc[0].sum(), x)
    assert (ran[0], sums[0]) == (1, 0)
    for a, b in ((yc, ys), (sc[0], ss[0]), (gc, gs)):
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_gate_of_minus_inf_empties_the_state_as_the_loop_does():
    """exp(-inf) = 0: the state is emptied at that token, finite, and the results equal the
    reference loop's (delta_product's marks would set them NaN; docs/design.md lets a
    non-finite input at step t leave the outputs from t on as the arithmetic gives them)."""
    q, k, v, beta, g, S0 = _inputs()
    g[0, 6, 1] = -float("inf")
    o, S = dp._product(q, k, v, beta, g, S0, chunk_size=4)
    want_o, want_S = chunk_delta.delta_product_recurrent(q, k, v, beta, g, initial_state=S0)
    assert bool(o.isfinite().all()) and bool(S.isfinite().all())
    assert (o - want_o).abs().max() <= 1e-12 * want_o.abs().max()
    assert (S - want_S).abs().max() <= 1e-12 * want_S.abs().max()
