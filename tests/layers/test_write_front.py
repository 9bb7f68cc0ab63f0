"""layers.attention.write_front: a fresh sequence's cache; when the new tokens fill every slot
(T = capacity: a sliding window of T, Titans-MAG / -MAL at T = window) the new tensor itself,
and a layer continuing from that cache equals its token-by-token reference."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers.attention import write_front


@pytest.mark.parametrize("T", [3, 5])
def test_write_front_values_and_no_copy_when_full(T):
    torch.manual_seed(0)
    cache = torch.randn(2, 3, 5, 4)
    new = torch.randn(2, 3, T, 4, dtype=torch.float64)
    out = write_front(cache, new)
    ref = torch.cat([new.to(cache.dtype), cache[:, :, T:]], 2)
    assert out.dtype == cache.dtype and out.is_contiguous() and torch.equal(out, ref)
    same = new.float()
    assert (write_front(cache, same).data_ptr() == same.data_ptr()) == (T == 5)
    strided = torch.randn(2, T, 3, 4).transpose(1, 2)   # not contiguous: copied
    assert torch.equal(write_front(cache, strided), torch.cat([strided, cache[:, :, T:]], 2))
    assert write_front(cache, strided).is_contiguous()


@pytest.mark.parametrize("name", ["attention", "titans_mag", "titans_mal"])
def test_full_window_cache_continues(name):
    # a fresh chunk of exactly `window` tokens fills the cache (write_front returns the new
    # keys and values themselves); the next chunk reads it: equal to the sequential mode
    torch.manual_seed(0)
    W = 4
    opts = dict(window=W, max_len=W) if name == "attention" else dict(window=W)
    layer = rnnzoo.create(name, d_model=8, num_heads=2, **opts).double()
    x = torch.randn(2, 3 * W, 8, dtype=torch.float64, requires_grad=True)
    fast = "parallel" if name == "attention" else "chunk"
    y1, s = layer(x[:, :W], mode=fast)
    y2, s = layer(x[:, W:], s, mode=fast)
    y = torch.cat([y1, y2], 1)
    ref, s_ref = layer(x, mode="sequential")
    assert (y - ref).abs().max() < 1e-10
    for a, b in zip(s, s_ref):
        assert (a - b).abs().max() < 1e-10
    g, = torch.autograd.grad((y * torch.cos(y)).sum() + sum(t.sum() for t in s[-3:-1]), x)
    g_ref, = torch.autograd.grad((ref * torch.cos(ref)).sum() + sum(t.sum() for t in s_ref[-3:-1]), x)
    assert (g - g_ref).abs().max() < 1e-10
