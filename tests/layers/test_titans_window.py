"""Titans-MAG / MAL's attention branch from a fresh state on the CPU (Titans._window: the C
heads, causal attention and W_out, the cache's first slots written) equals the attention
layer's own parallel form (finite marks, ring-buffer scatter): outputs, state and every
gradient, at T below and at the window, B = 1 and one head; a non-finite input or a begun
state takes the attention layer."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops import backend


@pytest.mark.parametrize("name", ["titans_mag", "titans_mal"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("B,T,heads,window", [(2, 7, 2, 7), (1, 5, 1, 9), (3, 12, 2, 12)])
def test_fresh_window_equals_attention(name, dtype, tol, B, T, heads, window):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=8, num_heads=heads, chunk_size=4, d_conv=2,
                          window=window).to(dtype)
    att = tuple(t.to(dtype) for t in layer.init_state(B)[-3:])
    # a cache already holding values past T: the fresh path keeps them, as the scatter does
    att = (att[0] + torch.randn_like(att[0]), att[1] + torch.randn_like(att[1]), att[2])
    x = torch.randn(B, T, 8, dtype=dtype)
    results = []
    for run in ("window", "attention"):
        xx = x.clone().requires_grad_()
        if run == "window":
            y, state = layer._window(xx, att)
        else:
            y, state = layer.attn._forward(xx, att, "parallel")
        layer.zero_grad(set_to_none=True)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        (y * g).sum().backward()
        grads = [xx.grad] + [p.grad for p in layer.attn.parameters()]
        results.append((y, state, grads))
    (y0, s0, g0), (y1, s1, g1) = results
    torch.testing.assert_close(y0, y1, rtol=tol, atol=tol)
    for a, b in zip(s0, s1):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(g0, g1):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["titans_mag", "titans_mal"])
def test_window_falls_back(name, monkeypatch):
    """A NaN input, a begun state or T over the window: the attention layer's own form."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=8, num_heads=2, chunk_size=4, d_conv=2, window=6).double()
    att = layer.init_state(2, dtype=torch.float64)[-3:]
    calls = []
    plain = layer.attn._forward
    monkeypatch.setattr(layer.attn, "_forward", lambda *a: calls.append(1) or plain(*a))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    if not backend.use_native(x):
        pytest.skip("the C path is off (RNNZOO_NATIVE=0 or no native build)")
    layer._window(x, att)
    assert calls == []                                   # fresh, finite, T <= window: C path
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    y, _ = layer._window(bad, att)
    assert calls == [1]
    assert not y[1, 2:].isfinite().any() and y[1, :2].isfinite().all() and y[0].isfinite().all()
    layer._window(x, (att[0], att[1], att[2] + 1))       # begun
    layer._window(torch.randn(2, 7, 8, dtype=torch.float64), att)   # over the window
    assert calls == [1, 1, 1]
