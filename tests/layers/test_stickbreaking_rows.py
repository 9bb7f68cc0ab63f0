"""Stick-breaking's C rows on vectors (ops/native/attention.c: sb_rows_fwd / sb_rows_bwd,
the suffix products and prefix sums of a row a vector at a time, the carry between vectors;
sb_heads_* by bands of their causal tiles, E = exp(-z) kept for the backward): against the
log-space PyTorch weights in float64, on rows of many vectors and a short last one, logits
large enough that the products fall under the flush threshold (1e-30) inside a row, and
masks with gaps next to the vectors' edges."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.layers import stickbreaking_attention as sb_module
from rnnzoo.ops.native import attention as native_attention

needs_native = pytest.mark.skipif(native_attention.load() is None,
                                  reason="no C compiler: the PyTorch path is the only one")


def _grads(out, inputs):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad((out * w).sum(), inputs)


def _inputs(dtype, B, H, Tq, Tk, D, scale):
    torch.manual_seed(0)
    q = (scale * torch.randn(B, H, Tq, D, dtype=torch.float64)).to(dtype).requires_grad_()
    k, v = (torch.randn(B, H, Tk, D, dtype=torch.float64).to(dtype).requires_grad_()
            for _ in range(2))
    return q, k, v


def _reference(q, k, v, visible):
    """the log-space weights in float64 on the same (rounded) inputs"""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o = sb_module.stick_breaking_weights(q64 @ k64.transpose(-1, -2), visible[:, None]) @ v64
    return o, _grads(o, (q64, k64, v64))


def _close(o, grads, ref, ref_grads, tol):
    assert (o.double() - ref).abs().max() <= tol * ref.abs().max()
    for a, b in zip(grads, ref_grads):
        assert (a.double() - b).abs().max() <= tol * b.abs().max()


@needs_native
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("shift", [0, -1])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("scale", [0.5, 6.0])  # 6: products under 1e-30 within a row
@pytest.mark.parametrize("T, threads", [(203, 1), (77, 2)])
def test_head_rows_on_vectors_equal_the_log_space_weights(monkeypatch, dtype, tol, shift,
                                                          keep, scale, T, threads):
    if not keep:
        monkeypatch.setattr(native_attention, "_KEEP", 0)  # E and A recomputed
    q, k, v = _inputs(dtype, 1, 3, T, T, 8, scale)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        o = native_attention.stick_breaking_attention(native_attention.load(), q, k, v, None,
                                                      shift)
        grads = _grads(o, (q, k, v))
    finally:
        torch.set_num_threads(prev)
    visible = torch.ones(T, T, dtype=torch.bool).tril(shift).expand(1, T, T)
    _close(o, grads, *_reference(q, k, v, visible), tol)
    if scale > 1:  # the flush reached: some weights are 0 before their row's first key
        A = sb_module.stick_breaking_weights((q @ k.transpose(-1, -2)).double(),
                                             visible[:, None])
        assert ((A < 1e-30) & visible[:, None]).any()


@needs_native
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("scale", [0.5, 6.0])
def test_masked_rows_on_vectors_equal_the_log_space_weights(dtype, tol, scale):
    """a general mask: keys hidden in runs that start and end next to the vectors' edges (16
    floats, 8 doubles), whole rows hidden, rows of every length mod 16"""
    B, Tq, Tk = 2, 37, 150
    q, k, v = _inputs(dtype, B, 2, Tq, Tk, 4, scale)
    g = torch.Generator().manual_seed(3)
    visible = torch.rand(B, Tq, Tk, generator=g) > 0.2
    visible[:, :, 15:17] = False
    visible[:, :, 31:48] = False
    visible[:, 5] = False
    for i in range(Tq):
        visible[:, i, 100 + i:] = False
    o = native_attention.stick_breaking_attention(native_attention.load(), q, k, v, visible)
    grads = _grads(o, (q, k, v))
    _close(o, grads, *_reference(q, k, v, visible), tol)
    assert o[:, :, 5].abs().max() == 0


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, threads", [((2, 7, 3, 5), 2), ((1, 1, 1, 4), 1)])
@pytest.mark.parametrize("unused", [None, 0, 2])  # an output without a gradient
def test_split_equals_views_transposes_and_scale(dtype, shape, threads, unused):
    """sb_split: q (times the scale), k, v (B, H, T, D) from the fused projection, and the
    gradient gathered back in its layout (zeros for an output that takes none)"""
    B, T, H, D = shape
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3 * H * D, generator=g, dtype=torch.float64).to(dtype)
    qkv.requires_grad_()
    scale = 0.37
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = sb_module._Split.apply(native_attention.load(), qkv, H, scale)
        used = [t for i, t in enumerate(got) if i != unused]
        grad = torch.autograd.grad(sum((t * (i + 1)).sum() for i, t in enumerate(used)), qkv)[0]
    finally:
        torch.set_num_threads(prev)
    q, k, v = qkv.view(B, T, 3, H, D).unbind(2)
    want = (q.transpose(1, 2) * scale, k.transpose(1, 2), v.transpose(1, 2))
    want_used = [t for i, t in enumerate(want) if i != unused]
    want_grad = torch.autograd.grad(sum((t * (i + 1)).sum() for i, t in enumerate(want_used)),
                                    qkv)[0]
    for a, b in zip(got, want):
        assert a.is_contiguous() and torch.equal(a, b)
    assert torch.equal(grad, want_grad)


@needs_native
@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
@pytest.mark.parametrize("threads", [1, 2])
def test_fresh_sequence_with_a_nonfinite_input_stays_causal(fill, threads):
    """The layer's fresh-sequence C path skips the zeroed copies and marks only when the
    projection sums to a finite number; with a NaN or inf at step t of one sequence it must
    take them (the tiles' A v meets the later NaN with a 0): outputs before t and the other
    sequences' outputs finite and equal to the clean run's. The conformance suite's
    non-finite check starts from a used state, not this path."""
    import rnnzoo

    torch.manual_seed(0)
    layer = rnnzoo.create("stickbreaking_attention", d_model=16, num_heads=2, max_len=64)
    x = torch.randn(3, 40, 16)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            y_clean = layer(x)[0]
            for t in (3, 20):
                xb = x.clone()
                xb[1, t, 5] = fill
                y = layer(xb)[0]
                assert bool(torch.isfinite(y[1, :t]).all()), t
                assert torch.allclose(y[1, :t], y_clean[1, :t], atol=1e-6, rtol=1e-5)
                assert torch.allclose(y[[0, 2]], y_clean[[0, 2]], atol=1e-6, rtol=1e-5)
                assert not bool(torch.isfinite(y[1, t:]).any())
    finally:
        torch.set_num_threads(prev)
