"""The attention layer's fresh-sequence path (Attention._attend on the CPU: a fresh sequence,
T <= window, finite q, k, v) runs the causal kernel without the finite marks and writes the
cache's first T slots without a scatter; it equals the marked form (outputs, state, every
gradient) and the sequential reference's state, for full attention, a sliding window and
Titans-MAG / MAL's attention branch (which runs through it); a non-finite input, a begun state
or T over the window take the marked form. Forgetting attention's fresh path (no finite marks
on q, k, v and the gates) likewise. The heads kernel's rows over threads (the causal kernel's
tiles by bands: test_attention_family_fast_paths)."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers import forgetting_attention as fox_module
from rnnzoo.layers.attention import Attention
from rnnzoo.ops.native import attention as native_attention


def _layer(name, window, heads, dtype):
    torch.manual_seed(0)
    if name == "attention":
        return rnnzoo.create(name, d_model=8, num_heads=heads, window=window, max_len=16).to(dtype)
    return rnnzoo.create(name, d_model=8, num_heads=heads, chunk_size=4, d_conv=2,
                         window=window).to(dtype).attn


def _run(attn, x, state, mode="parallel"):
    xx = x.clone().requires_grad_()
    y, new = attn._forward(xx, state, mode)
    attn.zero_grad(set_to_none=True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * g).sum().backward()
    return y, new, [xx.grad] + [p.grad for p in attn.parameters()]


def _assert_same_run(run, other, tol):
    """Two `_run`s agree: outputs, state, and every gradient (none missing)."""
    torch.testing.assert_close(run[0], other[0], rtol=tol, atol=tol)
    for a, b in zip(run[1], other[1]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(run[2], other[2]):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["attention", "titans_mag", "titans_mal"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("B,T,heads,window", [(2, 7, 2, 7), (1, 5, 1, 9), (3, 12, 2, None)])
def test_fresh_path_equals_marked_form_and_reference(monkeypatch, name, dtype, tol, B, T, heads,
                                                     window):
    if window is None and name != "attention":
        window = 12
    attn = _layer(name, window, heads, dtype)
    state = attn.init_state(B, dtype=dtype)
    # a cache already holding values past T: the fresh path keeps them, as the scatter does
    state = (state[0] + torch.randn_like(state[0]), state[1] + torch.randn_like(state[1]),
             state[2])
    x = torch.randn(B, T, 8, dtype=dtype)
    marked = []
    plain = attn._attend_marked
    monkeypatch.setattr(attn, "_attend_marked", lambda *a: marked.append(1) or plain(*a))
    fast = _run(attn, x, state)
    assert marked == []                                   # the fresh path ran
    monkeypatch.setattr(Attention, "_finite", staticmethod(lambda *ts: False))
    slow = _run(attn, x, state)
    assert marked == [1]
    ref = _run(attn, x, state, "sequential")
    for other in (slow, ref):
        _assert_same_run(fast, other, tol)


@pytest.mark.parametrize("name", ["attention", "titans_mag"])
def test_other_cases_take_the_marked_form(monkeypatch, name):
    """A NaN input (rows before it finite, from it NaN), a begun state, T over the window."""
    attn = _layer(name, 6, 2, torch.float64)
    state = attn.init_state(2, dtype=torch.float64)
    marked = []
    plain = attn._attend_marked
    monkeypatch.setattr(attn, "_attend_marked", lambda *a: marked.append(1) or plain(*a))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    attn._forward(x, state, "parallel")
    assert marked == []
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    y, _ = attn._forward(bad, state, "parallel")
    assert marked == [1]
    assert not y[1, 2:].isfinite().any() and y[1, :2].isfinite().all() and y[0].isfinite().all()
    attn._forward(x, (state[0], state[1], state[2] + 1), "parallel")          # begun
    attn._forward(torch.randn(2, 7, 8, dtype=torch.float64), state, "parallel")  # over the window
    assert marked == [1, 1, 1]


def test_titans_block_runs_the_fresh_path(monkeypatch):
    """MAG's chunk mode attends through the attention layer's fresh path (no other copy)."""
    torch.manual_seed(0)
    layer = rnnzoo.create("titans_mag", d_model=8, num_heads=2, chunk_size=4, d_conv=2,
                          window=8).double()
    calls = []
    plain = Attention._causal
    monkeypatch.setattr(Attention, "_causal", staticmethod(lambda *a: calls.append(1)
                                                           or plain(*a)))
    monkeypatch.setattr(layer.attn, "_attend_marked", lambda *a: pytest.fail("marked form"))
    layer(torch.randn(2, 6, 8, dtype=torch.float64), mode="chunk")
    assert calls == [1]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("B,T,heads,rope", [(2, 7, 2, None), (1, 5, 1, 10000.0)])
def test_forgetting_attention_fresh_path(monkeypatch, dtype, tol, B, T, heads, rope):
    torch.manual_seed(0)
    attn = rnnzoo.create("forgetting_attention", d_model=8, num_heads=heads, max_len=16,
                         rope_base=rope).to(dtype)
    state = attn.init_state(B, dtype=dtype)
    state = (state[0] + torch.randn_like(state[0]), state[1] + torch.randn_like(state[1]),
             state[2] + torch.randn_like(state[2]), state[3])
    x = torch.randn(B, T, 8, dtype=dtype)
    marks = []
    plain = fox_module.finite
    monkeypatch.setattr(fox_module, "finite", lambda *a: marks.append(1) or plain(*a))
    fast = _run(attn, x, state)
    assert marks == []                                   # the fresh path: no marks
    monkeypatch.setattr(Attention, "_finite", staticmethod(lambda *ts: False))
    slow = _run(attn, x, state)
    assert marks
    ref = _run(attn, x, state, "sequential")
    for other in (slow, ref):
        _assert_same_run(fast, other, tol)
    monkeypatch.undo()
    bad = x.clone()
    bad[-1, 2, 3] = float("nan")
    y, s = attn._forward(bad, state, "parallel")
    assert not y[-1, 2:].isfinite().any() and y[-1, :2].isfinite().all() and y[:-1].isfinite().all()


@pytest.mark.skipif(native_attention.load() is None, reason="no C compiler")
@pytest.mark.parametrize("B,T,H", [(2, 7, 3), (1, 5, 1), (3, 2, 2)])
def test_heads_kernel_rows_split_over_threads(B, T, H):
    """heads (and rope inside it): rows taken in the output's order ((b, h, t) when writing
    the (B, H, T, D) heads, (b, t, h) for the gradient), cut over 1, 2 or 3 threads: the same
    q, k, v and gradient of qkv, each equal to the split, turned and scaled projection (a row
    missed or written twice fails)."""
    from rnnzoo.layers import rotary
    torch.manual_seed(0)
    D = 6
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(T).expand(B, T) + torch.arange(B)[:, None]
    theta = rotary.frequencies(2, 100.0)
    angle = pos.double()[..., None] * theta
    parts = qkv.view(B, T, 3, H, D).unbind(2)

    def turn(t):  # the first 4 of 6 channels turned
        return torch.cat([rotary.rotate(t[..., :4], pos.double(), theta, pairs="halves"),
                          t[..., 4:]], -1)

    ref = [t.transpose(1, 2) for t in (0.5 * turn(parts[0]), turn(parts[1]), parts[2])]
    g = [torch.randn(t.shape, dtype=torch.float64) for t in ref]
    want = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ref, g)), qkv)[0]
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = native_attention.heads(native_attention.load(), qkv, H, angle.cos(),
                                         angle.sin(), 0.5)
            for a, b in zip(out, ref):
                torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
            got = torch.autograd.grad(sum((t * w).sum() for t, w in zip(out, g)), qkv)[0]
            torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    finally:
        torch.set_num_threads(old)
