"""ops/native/poly_attn.c: Based's and ReBased's parallel form on C head-rows (the kernel
matrix 1 + s + s^2 / 2 or s^2 by causal tiles and bands, its backward) against the PyTorch
parallel form (the masked (T, T) kernel matrix): outputs, final state and the gradients of
q, k, v and the initial state, float64 tight and float32 loose; T not a multiple of the tile,
one batch row, one head, scores kept or recomputed, 1 and 2 threads; a zero initial state
(its read skipped) and a non-zero one; the layers' auto mode takes it at short lengths."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, native_vs_torch, outputs_and_grads
from _second_order import second_order

import rnnzoo
from rnnzoo.ops import feature_maps as fm

needs_native = pytest.mark.skipif(fm.poly_lib(torch.zeros(1)) is None,
                                  reason="no C compiler: the PyTorch path is the only one")


@needs_native
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("fmap", ["taylor", "square"])
@pytest.mark.parametrize("shape, tile, threads", [((2, 45, 3, 4, 5), 16, 2),   # short last tile
                                                  ((1, 37, 1, 3, 2), 8, 1),    # B = 1, one head
                                                  ((2, 70, 2, 5, 6), 64, 2)])  # bands of one tile
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("state", ["zero", "random", "zero_grad"])
def test_poly_heads_equal_the_masked_kernel_matrix(monkeypatch, dtype, tol, fmap, shape, tile,
                                                   threads, keep, state):
    monkeypatch.setattr(fm, "_PA_TILE", tile)
    if not keep:
        monkeypatch.setattr(fm.native_attention, "_KEEP", 0)  # scores recomputed
    calls = counter(monkeypatch, fm, "_parallel_heads")
    B, T, H, d, V = shape
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, d, generator=g, dtype=torch.float64).to(dtype)
            for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64).to(dtype)
    F = fm.feature_size(fmap, d)
    S0 = (0.3 * torch.randn(B, H, F, V + 1, generator=g, dtype=torch.float64)
          if state == "random" else torch.zeros(B, H, F, V + 1, dtype=torch.float64))
    S0 = S0.to(dtype)
    grad_in = [q, k, v] + ([S0] if state != "zero" else [])
    for t in grad_in:
        t.requires_grad_()

    def run():
        o, S = fm.feature_attention(q, k, v, fmap, mode="parallel", initial_state=S0)
        return outputs_and_grads([o, S], grad_in)

    got, want = native_vs_torch(run, threads)
    assert calls[0] == 1
    assert_close(got, want, ["o", "S", "dq", "dk", "dv", "dS0"], tol)


@needs_native
@pytest.mark.parametrize("name", ["based", "rebased"])
def test_auto_mode_takes_the_parallel_kernel_at_short_lengths(monkeypatch, name):
    calls = counter(monkeypatch, fm, "_parallel_heads")
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=16, num_heads=2, feature_dim=4)
    assert layer.auto_mode(torch.zeros(1, 2000, 16)) == "chunk"
    x = torch.randn(2, 21, 16, requires_grad=True)
    assert layer.auto_mode(x) == "parallel"
    y, S = layer(x)
    assert calls[0] == 1
    y_ref, S_ref = layer(x, mode="chunk")
    assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
    assert (S - S_ref).abs().max() < 1e-5 * S_ref.abs().max()


@pytest.mark.parametrize("name", ["based", "rebased"])
def test_auto_mode_is_chunk_without_a_tensor_or_under_sequence_parallelism(monkeypatch, name):
    """`rnnzoo train --sequence-parallel` runs mode="auto" and needs a mode with the LASP-2
    hook (chunk): the parallel kernel matrix of a rank's slice would miss the earlier ranks'
    tokens. auto_mode(None) (the sequence-parallel check's question) answers without x."""
    from rnnzoo.ops import sequence_parallel

    layer = rnnzoo.create(name, d_model=16, num_heads=2, feature_dim=4)
    assert layer.auto_mode(None) == "chunk"
    monkeypatch.setattr(sequence_parallel, "active", lambda: True)
    assert layer.auto_mode(torch.zeros(1, 21, 16)) == "chunk"


@needs_native
def test_parallel_with_no_steps_returns_the_initial_state():
    """T = 0 on the C path as on the PyTorch one (which gives it): empty outputs and the
    initial state back (the C path's tiles of min(64, T) = 0 queries raised ValueError)."""
    q, k = torch.randn(2, 0, 2, 4), torch.randn(2, 0, 2, 4)
    v = torch.randn(2, 0, 2, 3)
    S0 = torch.randn(2, 2, fm.feature_size("taylor", 4), 4)
    o, S = fm.feature_attention(q, k, v, mode="parallel", initial_state=S0)
    assert o.shape == (2, 0, 2, 3) and torch.equal(S, S0)


@needs_native
@pytest.mark.parametrize("square", [False, True])
def test_poly_heads_and_pairs_second_derivative(square):
    """Under create_graph=True _PolyHeads's `twice` (feature_maps._poly_heads, the masked
    kernel matrix, replayed over the saved inputs) and attention's _Pairs's (its PyTorch form
    `feature_maps._torch_pairs`, the packed features of the chunk form) give the second derivative in q, k, v
    and in x, float64, against a central difference and the plain forms' own double
    backward; q a transposed view (the kernels read copies)."""
    from rnnzoo.ops.native import attention
    lib, alib = fm.poly_lib(torch.zeros(1)), attention.load()
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    qt, k, v = r(2, 5, 2, 3), r(2, 2, 5, 3), r(2, 2, 5, 4)

    def native(qt, k, v):
        return fm._PolyHeads.apply(lib, qt.transpose(1, 2), k, v, square)

    def plain(qt, k, v):
        return fm._poly_heads(qt.transpose(1, 2), k, v, square)

    torch.testing.assert_close(native(qt, k, v), plain(qt, k, v), rtol=1e-12, atol=1e-12)
    second_order(native, [qt, k, v], plain)
    xt, w = r(2, 3, 5), r(6).detach()  # w: constant weights (no gradient in the kernel)

    def pairs(xt):
        return attention.pairs(alib, xt.transpose(1, 2), w, not square, plain=fm._torch_pairs)

    def pairs_plain(xt):
        return fm._torch_pairs(xt.transpose(1, 2), w, not square)

    torch.testing.assert_close(pairs(xt), pairs_plain(xt), rtol=1e-12, atol=1e-12)
    second_order(pairs, [xt], pairs_plain)
