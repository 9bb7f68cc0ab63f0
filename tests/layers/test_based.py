"""Based (arXiv:2402.18668): fla's naive Based (parallel and chunked) on the layer's own
tensors, and the fact that the second-order Taylor feature map's inner product is exactly
1 + q.k + (q.k)^2 / 2."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.feature_maps import _CausalKernel, _Starts, feature_attention, features, kernel


@pytest.mark.parametrize("mode", ["sequential", "chunk", "parallel"])
def test_layer_equals_fla_naive_based(mode):
    naive = pytest.importorskip("fla.ops.based.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("based", d_model=16, num_heads=2, feature_dim=4, chunk_size=8,
                          eps=1e-6).double()  # fla's naive adds 1e-6 to the normaliser
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = (t.transpose(1, 2) for t in layer.op_inputs(x))  # fla: (B, H, T, D)
        refs = [naive.naive_parallel_based(q, k, v), naive.naive_chunk_based(q, k, v, 8)]
        y, _ = layer(x, mode=mode)
        for o in refs:
            y_ref = layer.op_output(o.transpose(1, 2), x)
            assert (y - y_ref).abs().max() < 1e-12 * y_ref.abs().max()


def test_taylor_feature_map_inner_product_is_the_second_order_expansion():
    torch.manual_seed(1)
    q, k = torch.randn(2, 50, 3, 6, dtype=torch.float64).unbind(0)
    s = (q * k).sum(-1)
    dot = (features(q, "taylor") * features(k, "taylor")).sum(-1)
    assert features(q, "taylor").shape[-1] == 1 + 6 + 36
    assert (dot - (1 + s + s * s / 2)).abs().max() < 1e-13 * dot.abs().max()
    # and the op's normalised attention is that kernel's, read off a one-step sequence pair
    v = torch.randn(1, 2, 1, 5, dtype=torch.float64)
    qq, kk = torch.randn(2, 1, 2, 1, 6, dtype=torch.float64).unbind(0)
    o, _ = feature_attention(qq, kk, v, "taylor", mode="sequential", eps=0.0)
    w = 1 + (qq[0, 1] * kk[0, :]).sum(-1) + (qq[0, 1] * kk[0, :]).sum(-1) ** 2 / 2  # (2, 1)
    assert (o[0, 1] - (w[:, :, None] * v[0]).sum(0) / w.sum(0)).abs().max() < 1e-13


def test_options_checked():
    with pytest.raises(ValueError, match="feature_dim must be"):
        rnnzoo.create("based", d_model=8, feature_dim=0)
    with pytest.raises(ValueError, match="eps must lie in"):
        rnnzoo.create("based", d_model=8, eps=-1.0)


@pytest.mark.parametrize("square", [False, True])
def test_causal_kernel_matches_masked_kernel(square):
    """feature_maps._CausalKernel (the chunk form's in-chunk kernel matrix): values and
    float64 gradients against torch.where over `kernel`, odd sizes."""
    s = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    fm = "square" if square else "taylor"
    want = torch.where(torch.ones(5, 5, dtype=torch.bool).tril(), kernel(s, fm), 0.0)
    assert torch.allclose(_CausalKernel.apply(s, square), want, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: _CausalKernel.apply(t, square), [s])


def test_chunk_starts_match_cumsum():
    """feature_maps._Starts (the states entering each chunk, and their total): values and
    float64 gradients against cat + cumsum, one chunk and several."""
    for N in (1, 4):
        first = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
        U = torch.randn(2, 3, N, 5, 4, dtype=torch.float64, requires_grad=True)
        before, total = _Starts.apply(first, U)
        want = torch.cat([first[:, :, None], U[:, :, :-1]], 2).cumsum(2)
        assert torch.allclose(before, want, rtol=1e-14, atol=1e-14)
        assert torch.allclose(total, U.sum(2), rtol=1e-14, atol=1e-14)
        assert torch.autograd.gradcheck(_Starts.apply, [first, U])


@pytest.mark.parametrize("feature_map", ["taylor", "square"])
@pytest.mark.parametrize("d", [1, 5])
def test_fold_unfold_read_and_write_the_full_state(feature_map, d):
    """feature_maps.fold / unfold (the chunk form's packed states): psi(q) . fold(S) =
    phi(q) . S for any state S, and unfold(psi(k)^T v) = phi(k)^T v, float64."""
    from rnnzoo.ops.feature_maps import feature_size, fold, packed, unfold

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(3, 7, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    S = torch.randn(3, feature_size(feature_map, d), 4, generator=g, dtype=torch.float64)
    assert torch.allclose(packed(q, feature_map)[0] @ fold(S, d, feature_map),
                          features(q, feature_map) @ S, rtol=1e-12, atol=1e-12)
    assert torch.allclose(unfold(packed(k, feature_map)[0].transpose(1, 2) @ v, d, feature_map),
                          features(k, feature_map).transpose(1, 2) @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("square", [False, True])
def test_causal_kernel_upper_is_the_transposed_kernel(square):
    """_CausalKernel with upper=True (the chunk form's transposed kernel matrix from k q^T):
    the transpose of the lower one, float64 gradients, odd sizes."""
    s = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    want = _CausalKernel.apply(s.transpose(-1, -2), square).transpose(-1, -2)
    assert torch.allclose(_CausalKernel.apply(s, square, True), want, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: _CausalKernel.apply(t, square, True), [s])


def test_chunk_read_and_transpose_functions():
    """feature_maps._Read (before psi_q^T on the C products, psi_q's gradient as g^T before)
    and _Transposed (a contiguous transpose each way): values and float64 gradients."""
    from rnnzoo.ops import backend
    from rnnzoo.ops.feature_maps import _Read, _Transposed
    from rnnzoo.ops.native import attention as native_attention

    g = torch.Generator().manual_seed(0)
    before = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    psi = torch.randn(2, 3, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.equal(_Transposed.apply(x), x.transpose(-1, -2))
    assert _Transposed.apply(x).is_contiguous()
    assert torch.autograd.gradcheck(_Transposed.apply, [x])
    lib = native_attention.load() if backend.use_native(before) else None
    if lib is None:
        pytest.skip("no native attention kernels here")
    want = before @ psi.transpose(-1, -2)
    assert torch.allclose(_Read.apply(lib, before, psi), want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda b, p: _Read.apply(lib, b, p), [before, psi])
