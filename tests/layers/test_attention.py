"""The attention baseline: KV cache and sliding-window ring buffer against a plain
softmax attention written from the definition."""

from __future__ import annotations

import pytest
import torch
from _twice import check_layer_twice

import rnnzoo
from rnnzoo.ops import backend


def naive(layer, x, window=None):
    """softmax(q k^T / sqrt(d) + causal (and window) mask) v, from scratch."""
    B, T, _ = x.shape
    H, Dh = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(x).view(B, T, 3, H, Dh).unbind(2)
    pos = torch.arange(T).expand(B, T)
    q, k, v = (t.transpose(1, 2) for t in (layer.rope(q, pos), layer.rope(k, pos), v))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    allowed = (j <= i) if window is None else (j <= i) & (i - j < window)
    att = (q @ k.transpose(-1, -2) / Dh ** 0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
    return layer.out_proj((att @ v).transpose(1, 2).reshape(B, T, H * Dh))


@pytest.mark.parametrize("window", [None, 3, 5])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_matches_definition_and_streams_in_chunks(window, mode):
    torch.manual_seed(0)
    layer = rnnzoo.create("attention", d_model=8, num_heads=2, window=window, max_len=20).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y, _ = layer(x, mode=mode)
    assert (y - naive(layer, x, window)).abs().max() < 1e-12
    s, parts = None, []
    for a, b in [(0, 2), (2, 9), (9, 10), (10, 13)]:  # chunks longer and shorter than the window
        y_part, s = layer(x[:, a:b], s, mode=mode)
        parts.append(y_part)
    assert (torch.cat(parts, 1) - y).abs().max() < 1e-12


def test_window_state_is_window_sized_and_streams_past_max_len():
    layer = rnnzoo.create("attention", d_model=8, num_heads=2, window=4, max_len=8)
    assert layer.init_state(1)[0].shape == (1, 2, 4, 4)
    y, s = layer(torch.randn(1, 30, 8))  # longer than max_len: fine with a window
    assert float(s[2][0]) == 30


def test_full_cache_overflow_is_a_clear_error():
    layer = rnnzoo.create("attention", d_model=8, num_heads=2, max_len=8)
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        layer(torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match="num_heads must divide d_model=8, got 3"):
        rnnzoo.create("attention", d_model=8, num_heads=3)
    with pytest.raises(ValueError, match="window must be a positive int or None, got 0"):
        rnnzoo.create("attention", d_model=8, window=0)



def test_sequential_second_derivative_on_the_torch_path():
    """The reference runs PyTorch's attention by its math form (the fused kernels have no
    double backward): differentiable twice in x and the parameters."""
    torch.manual_seed(0)
    layer = rnnzoo.create('attention', **dict(d_model=4, num_heads=2, max_len=16)).double()
    with backend.force("torch"):
        check_layer_twice(layer, torch.randn(1, 3, 4, dtype=torch.float64,
                                             requires_grad=True), "sequential")
