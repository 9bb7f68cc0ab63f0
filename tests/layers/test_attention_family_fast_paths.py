"""The CPU fast paths of the attention family (issue 17) against their plain forms:

- stick-breaking: the blocked C kernels (ops/native/attention.py) equal the log-space
  PyTorch weights, values and gradients, causal (with and without the current token) and
  under a general mask, through many small blocks and tiles, weights kept for the backward
  or recomputed there; the layer runs them;
- causal softmax attention (plain attention and FoX on a fresh sequence): the blocked C
  softmax rows equal the masked softmax with a bias per key, kept or recomputed for the
  backward; the rotary kernels (rope, heads) equal layers.rotary on strided views and the
  split of the fused projection; the attention layer runs them and equals its fallback;
- forgetting attention: the decay is a bias per key (C rows), or rides in one key channel
  so that PyTorch's fused attention gets no (T, T) bias (is_causal on a fresh sequence),
  and either way equals softmax with the bias D_ij = G_i - G_j built whole, gradients too;
- based / rebased: the chunk mode never forms the F-wide features (packed pairs across
  chunks, the kernel matrix inside) and equals the recurrent reference from a non-zero
  state, with the C feature kernel and with its PyTorch fallback.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.layers import forgetting_attention as fox_module
from rnnzoo.layers import rotary
from rnnzoo.layers import stickbreaking_attention as sb_module
from rnnzoo.ops import backend
from rnnzoo.ops import feature_maps as fm
from rnnzoo.ops.native import attention as native_attention

sys.path.insert(0, str(Path(__file__).parents[1] / "ops"))
from _native_check import counter  # noqa: E402

needs_native = pytest.mark.skipif(native_attention.load() is None,
                                  reason="no C compiler: the PyTorch path is the only one")


def _grads(out, inputs):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), inputs)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["causal", "strict", "mask"])
@pytest.mark.parametrize("keep", [True, False])
def test_stick_breaking_kernels_equal_the_log_space_weights(monkeypatch, dtype, case, keep):
    monkeypatch.setattr(native_attention, "_BLOCK", 40)  # many blocks of a few rows
    monkeypatch.setattr(native_attention, "_TILE", 3)    # and causal tiles of 3 queries
    monkeypatch.setattr(native_attention, "_SB_TILE", 3)  # (a head-row at a time: causal)
    if not keep:
        monkeypatch.setattr(native_attention, "_KEEP", 0)  # weights recomputed
    torch.manual_seed(0)
    B, H, Tq, D = 2, 3, 10, 4
    Tk = 13 if case == "mask" else Tq
    q = (2 * torch.randn(B, H, Tq, D, dtype=dtype)).requires_grad_()
    k, v = (torch.randn(B, H, Tk, D, dtype=dtype).requires_grad_() for _ in range(2))
    if case == "mask":
        visible, shift = torch.rand(B, Tq, Tk) > 0.3, 0
    else:
        shift = 0 if case == "causal" else -1
        visible = torch.ones(Tq, Tq, dtype=torch.bool).tril(shift).expand(B, Tq, Tq)
    lib = native_attention.load()
    o = native_attention.stick_breaking_attention(lib, q, k, v,
                                                  visible if case == "mask" else None, shift)
    ref = sb_module.stick_breaking_weights(q @ k.transpose(-1, -2), visible[:, None]) @ v
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (o - ref).abs().max() < tol * ref.abs().max()
    for a, b in zip(_grads(o, (q, k, v)), _grads(ref, (q, k, v))):
        assert (a - b).abs().max() < tol * b.abs().max()
    if case == "strict":  # the first query sees nothing: a zero row, not a NaN
        assert o[:, :, 0].abs().max() == 0


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shift", [0, -1])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("shape, tile, threads", [((2, 3, 10, 4, 5), 3, 4),   # 6 head-rows, 4 parts
                                                  ((1, 1, 7, 3, 2), 3, 2),     # one head-row
                                                  ((1, 2, 70, 16, 8), 64, 2),  # a short last tile
                                                  ((1, 1, 1, 4, 4), 64, 1)])   # one token
def test_stick_breaking_head_rows_kernel_equals_the_log_space_weights(monkeypatch, dtype, shift,
                                                                      keep, shape, tile,
                                                                      threads):
    monkeypatch.setattr(native_attention, "_SB_TILE", tile)
    if not keep:
        monkeypatch.setattr(native_attention, "_KEEP", 0)  # z and A recomputed
    torch.manual_seed(0)
    B, H, T, D, V = shape
    q = (2 * torch.randn(B, H, T, D, dtype=dtype)).requires_grad_()
    k = torch.randn(B, H, T, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, T, V, dtype=dtype, requires_grad=True)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)  # the head-rows split over threads
    try:
        o = native_attention.stick_breaking_attention(native_attention.load(), q, k, v, None,
                                                      shift)
        grads = _grads(o, (q, k, v))
    finally:
        torch.set_num_threads(prev)
    visible = torch.ones(T, T, dtype=torch.bool).tril(shift).expand(B, T, T)
    ref = sb_module.stick_breaking_weights(q @ k.transpose(-1, -2), visible[:, None]) @ v
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (o - ref).abs().max() <= tol * ref.abs().max()
    for a, b in zip(grads, _grads(ref, (q, k, v))):
        assert (a - b).abs().max() <= tol * b.abs().max()


@needs_native
@pytest.mark.parametrize("attend_current", [False, True])
def test_stickbreaking_layer_runs_the_kernels_and_equals_its_fallback(monkeypatch,
                                                                      attend_current):
    calls = counter(monkeypatch, sb_module.native_attention, "stick_breaking_attention")
    torch.manual_seed(2)
    layer = rnnzoo.create("stickbreaking_attention", d_model=8, num_heads=2, max_len=32,
                          attend_current=attend_current).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)

    def run():  # fresh, then through the cache
        y1, s = layer(x[:, :6], mode="parallel")
        y2, _ = layer(x[:, 6:], s, mode="parallel")
        y = torch.cat([y1, y2], 1)
        return (y, *_grads(y, (x, *layer.parameters())))

    fast = run()
    assert calls[0] == 2
    with backend.force("torch"):
        slow = run()
    assert calls[0] == 2
    for a, b in zip(fast, slow):
        assert (a - b).abs().max() < 1e-12 * b.abs().max()


def _fox_reference(layer, x):
    """Softmax attention with the (T, T) decay bias built whole: FoX's definition."""
    q, k, v, g = (t.transpose(1, 2) for t in layer.op_inputs(x))
    G = g.cumsum(-1)
    T = x.shape[1]
    bias = (G[..., :, None] - G[..., None, :]).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    s = q @ k.transpose(-1, -2) * layer.head_dim ** -0.5 + bias
    return layer.op_output((s.softmax(-1) @ v).transpose(1, 2), x)


@pytest.mark.parametrize("native", [True, False])
def test_forgetting_attention_takes_the_bias_per_key_and_equals_the_definition(monkeypatch,
                                                                               native):
    if native and native_attention.load() is None:
        pytest.skip("no C compiler")
    seen, real = [], F.scaled_dot_product_attention

    def spy(*args, **kw):
        seen.append((kw.get("attn_mask"), kw.get("is_causal", False)))
        return real(*args, **kw)
    monkeypatch.setattr(fox_module.F, "scaled_dot_product_attention", spy)
    calls = counter(monkeypatch, fox_module.native_attention, "causal_softmax_attention")
    torch.manual_seed(3)
    layer = rnnzoo.create("forgetting_attention", d_model=8, num_heads=2, max_len=32,
                          qk_norm=True, use_output_gate=True).double()
    with torch.no_grad():
        layer.f_proj.bias.fill_(-1.0)  # strong forgetting: the bias matters
    x = torch.randn(2, 12, 8, dtype=torch.float64, requires_grad=True)
    with backend.force("torch") if not native else contextlib.nullcontext():
        y, s = layer(x, mode="parallel")
        # fresh: the C softmax rows with the bias per key, else the causal flag; no (T, T)
        assert (calls[0], seen) == ((1, []) if native else (0, [(None, True)]))
        ref = _fox_reference(layer, x)
        assert (y - ref).abs().max() < 1e-12 * ref.abs().max()
        params = (x, *layer.parameters())
        for a, b in zip(_grads(y, params), _grads(ref, params)):
            assert (a - b).abs().max() < 1e-12 * b.abs().max()
        layer(x[:, :3], s, mode="parallel")  # through the cache: a boolean mask, still no bias
        assert seen[-1][0].dtype == torch.bool


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("shape, tile, threads", [((2, 3, 11, 5, 4), 3, 1),
                                                  ((2, 3, 11, 5, 4), 3, 4),    # 6 head-rows, 4 parts
                                                  ((1, 1, 7, 3, 2), 3, 2),     # one head-row
                                                  ((1, 2, 70, 32, 16), 64, 2),  # a short last tile
                                                  # tiles by bands (multiples of 6 rows, keys
                                                  # to the next multiple of 16): full and
                                                  # partial tiles, 100 = 64 + 36,
                                                  # 45 = 20 + 20 + 5, one exact tile
                                                  ((1, 2, 100, 8, 5), 64, 1),
                                                  ((2, 1, 45, 4, 3), 20, 2),
                                                  ((1, 1, 64, 32, 32), 64, 1)])
def test_causal_softmax_kernels_equal_masked_softmax(monkeypatch, dtype, bias, keep, shape,
                                                     tile, threads):
    monkeypatch.setattr(native_attention, "_SM_TILE", tile)  # causal tiles of `tile` queries
    if not keep:
        monkeypatch.setattr(native_attention, "_KEEP", 0)   # probabilities recomputed
    torch.manual_seed(0)
    B, H, T, D, V = shape
    q = (2 * torch.randn(B, H, T, D, dtype=dtype)).requires_grad_()
    k = torch.randn(B, H, T, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, T, V, dtype=dtype, requires_grad=True)
    b = (3 * torch.randn(B, H, T, dtype=dtype)).requires_grad_() if bias else None
    inputs = (q, k, v, b) if bias else (q, k, v)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)  # the head-rows split over threads
    try:
        o = native_attention.causal_softmax_attention(native_attention.load(), q, k, v, b)
        grads = _grads(o, inputs)
    finally:
        torch.set_num_threads(prev)
    s = q @ k.transpose(-1, -2) + (b[..., None, :] if bias else 0)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    ref = s.softmax(-1) @ v
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (o - ref).abs().max() < tol * ref.abs().max()
    for x, y in zip(grads, _grads(ref, inputs)):
        assert (x - y).abs().max() < tol * y.abs().max()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("n", [45, 48, 40])
@pytest.mark.parametrize("b_strided", [False, True])
def test_block_product_kernel_equals_bmm(dtype, transposed, threads, n, b_strided):
    # the softmax blocks' products (mm.h: mm): full and partial column tiles (45 columns:
    # 32 + 13 floats, 16 + 16 + 13 doubles, packed; 48 and 40: a last tile of one vector
    # read in place, 16 floats or 8 doubles at AVX-512), row groups across blocks and
    # threads, A read transposed through its strides, B with strided columns (packed whole),
    # C written into a strided slice or accumulated
    torch.manual_seed(0)
    g, m, k = 3, 13, 7
    A = torch.randn(g, k, m, dtype=dtype).transpose(1, 2) if transposed else \
        torch.randn(g, m, k, dtype=dtype)
    Bm = torch.randn(g, n + 5, k, dtype=dtype)[:, 2:n + 2].transpose(1, 2) if b_strided else \
        torch.randn(g, k, n + 5, dtype=dtype)[..., 2:n + 2]
    C = torch.randn(g, m + 2, n, dtype=dtype)
    ref = C.clone()
    ref[:, 1:m + 1] += A @ Bm
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native_attention._mm(native_attention.load(), A, Bm, C[:, 1:], m, n, k,
                             A.stride()[1:], Bm.stride(1), n, (A.stride(0), Bm.stride(0),
                                                               C.stride(0)), g, acc=True,
                             b_cs=Bm.stride(2))
    finally:
        torch.set_num_threads(prev)
    assert (C - ref).abs().max() < (1e-12 if dtype == torch.float64 else 1e-5) * ref.abs().max()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bmm_equals_matmul_with_gradients(dtype):
    # based / rebased's chunk products: a read through any strides (a transposed view), b
    # with strided columns (packed in the kernel), leading dims flattened, gradients in both
    torch.manual_seed(0)
    a = torch.randn(2, 3, 9, 13, dtype=dtype).transpose(-1, -2).requires_grad_()
    b = torch.randn(2, 3, 35, 9, dtype=dtype).transpose(-1, -2).requires_grad_()
    c = native_attention.bmm(native_attention.load(), a, b)
    ref = a @ b
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert c.shape == ref.shape and (c - ref).abs().max() < tol * ref.abs().max()
    for x, y in zip(_grads(c, (a, b)), _grads(ref, (a, b))):
        assert (x - y).abs().max() < tol * y.abs().max()


@needs_native
@pytest.mark.parametrize("rotary_dim", [6, 2])
def test_rope_kernel_equals_rotate_on_strided_heads(rotary_dim):
    torch.manual_seed(1)
    B, T, H, D = 2, 7, 3, 6
    qkv = torch.randn(B, T, 2 * H * D, dtype=torch.float64, requires_grad=True)
    x = qkv[..., H * D:].view(B, T, H, D)   # a strided view, as the layers' split gives
    pos = torch.tensor([[0], [5]]) + torch.arange(T)
    half = rotary_dim // 2
    theta = rotary.frequencies(half, 100.0)
    angle = pos.double()[..., None] * theta
    y = native_attention.rope(native_attention.load(), x, angle.cos(), angle.sin())
    ref = torch.cat([rotary.rotate(x[..., :rotary_dim], pos.double(), theta, pairs="halves"),
                     x[..., rotary_dim:]], -1)
    assert y.shape == ref.shape and y.transpose(1, 2).is_contiguous()
    assert (y - ref).abs().max() < 1e-14
    for a, b in zip(_grads(y, (qkv,)), _grads(ref, (qkv,))):
        assert (a - b).abs().max() < 1e-14


@needs_native
@pytest.mark.parametrize("rotary_dim", [6, 0])
def test_heads_kernel_equals_split_rotate_scale_transpose(rotary_dim):
    torch.manual_seed(1)
    B, T, H, D = 2, 7, 3, 6
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0], [5]]) + torch.arange(T)
    theta = rotary.frequencies(rotary_dim // 2, 100.0)
    angle = pos.double()[..., None] * theta
    q, k, v = native_attention.heads(native_attention.load(), qkv, H, angle.cos(), angle.sin(),
                                     0.5)
    turn = (lambda t: rotary.rotate(t, pos.double(), theta, pairs="halves")) if rotary_dim \
        else (lambda t: t)
    ref = [t.transpose(1, 2) for t in (0.5 * turn(qkv[..., :H * D].view(B, T, H, D)),
                                       turn(qkv[..., H * D:2 * H * D].view(B, T, H, D)),
                                       qkv[..., 2 * H * D:].view(B, T, H, D))]
    for a, b in zip((q, k, v), ref):
        assert a.is_contiguous() and (a - b).abs().max() < 1e-14
    for a, b in zip(_grads(q + v, (qkv,)), _grads(ref[0] + ref[2], (qkv,))):  # k: no gradient
        assert (a - b).abs().max() < 1e-14


@needs_native
@pytest.mark.parametrize("opts", [{}, dict(rotary_dim=2, num_kv_heads=1)])
def test_attention_layer_runs_the_kernels_and_equals_its_fallback(monkeypatch, opts):
    calls = counter(monkeypatch, native_attention, "causal_softmax_attention", "rope", "heads")
    torch.manual_seed(2)
    layer = rnnzoo.create("attention", d_model=8, num_heads=2, max_len=32, **opts).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)

    def run():  # fresh, then through the cache
        y1, s = layer(x[:, :6], mode="parallel")
        y2, s = layer(x[:, 6:], s, mode="parallel")
        y = torch.cat([y1, y2], 1)
        return (y, *s, *_grads(y, (x, *layer.parameters())))

    fast = run()
    # the fresh chunk's attention; in both chunks q, k, v split from the fused projection
    # with q, k rotated in one kernel (heads), or with grouped keys q and k rotated apart
    n = 1 + (4 if opts else 2)
    assert calls[0] == n
    with backend.force("torch"):
        slow = run()
    assert calls[0] == n
    for a, b in zip(fast, slow):
        assert (a - b).abs().max() < 1e-12 * b.abs().max()


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("name, fmap", [("based", "taylor"), ("rebased", "square")])
def test_feature_chunk_mode_never_forms_full_features(monkeypatch, native, name, fmap):
    if native and native_attention.load() is None:
        pytest.skip("no C compiler")

    def refuse(*_a, **_k):
        raise AssertionError("the chunk mode formed the F-wide features")
    torch.manual_seed(4)
    B, T, H, d, V = 2, 11, 3, 4, 5
    q, k = (torch.randn(B, T, H, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, H, V, dtype=torch.float64, requires_grad=True)
    S0 = torch.randn(B, H, fm.feature_size(fmap, d), V + 1, dtype=torch.float64,
                     requires_grad=True)
    o_ref, S_ref = fm.feature_attention(q, k, v, fmap, mode="sequential", initial_state=S0)
    with monkeypatch.context() as m:
        m.setattr(fm, "features", refuse)
        if native:
            calls = counter(m, fm.native_attention, "pairs")
            o, S = fm.feature_attention(q, k, v, fmap, mode="chunk", initial_state=S0,
                                        chunk_size=4)
            assert calls[0] == 2  # psi(q), psi(k)
        else:
            with backend.force("torch"):
                o, S = fm.feature_attention(q, k, v, fmap, mode="chunk", initial_state=S0,
                                            chunk_size=4)
    for a, b in [(o, o_ref), (S, S_ref)]:
        assert (a - b).abs().max() < 1e-12 * b.abs().max()
    inputs = (q, k, v, S0)
    loss = lambda o, S: (o.square().sum() + (S * S_ref.detach()).sum())  # noqa: E731
    for a, b in zip(torch.autograd.grad(loss(o, S), inputs),
                    torch.autograd.grad(loss(o_ref, S_ref), inputs)):
        assert (a - b).abs().max() < 1e-11 * b.abs().max()


@pytest.mark.parametrize("fmap", ["taylor", "square"])
def test_packed_features_keep_the_kernel_and_read_any_state(fmap):
    torch.manual_seed(5)
    q, k = torch.randn(2, 7, 5, dtype=torch.float64).unbind(0)
    psi_q, R = fm.packed(q, fmap)
    psi_k, _ = fm.packed(k, fmap)
    d = 5
    assert psi_q.shape[-1] == (1 + d if fmap == "taylor" else 0) + d * (d + 1) // 2
    full = (fm.features(q, fmap) * fm.features(k, fmap)).sum(-1)
    assert ((psi_q * psi_k).sum(-1) - full).abs().max() < 1e-13 * full.abs().max()
    S = torch.randn(fm.feature_size(fmap, d), 3, dtype=torch.float64)  # not symmetric
    read = fm.features(q, fmap) @ S
    assert (psi_q @ (R @ S) - read).abs().max() < 1e-13 * read.abs().max()
    # and R^T unpacks a packed sum of psi(k) v^T into the full one
    v = torch.randn(7, 3, dtype=torch.float64)
    want = fm.features(k, fmap).T @ v
    assert (R.T @ (psi_k.T @ v) - want).abs().max() < 1e-13 * want.abs().max()
