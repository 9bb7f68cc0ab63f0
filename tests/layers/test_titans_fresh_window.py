"""The sliding-window attention of Titans-MAG / MAL from a fresh state on the CPU attends to
the new tokens only (its ring buffer is empty: the position read on the host there costs no
sync), and still equals the token-by-token reference, outputs and state; from a begun state
it keeps attending through the buffer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
import rnnzoo.layers.attention as attention


@pytest.mark.parametrize("name", ["titans_mag", "titans_mal"])
def test_fresh_window_skips_the_empty_cache(name, monkeypatch):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=8, num_heads=2, chunk_size=4, d_conv=2, window=6).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    keys, plain = [], F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kw):
        keys.append(k.shape[2])
        return plain(q, k, v, *args, **kw)

    def native(lib, q, k, v, *args):  # a fresh sequence on the CPU: the C softmax rows
        keys.append(k.shape[2])
        return fused(lib, q, k, v, *args)

    fused = attention.native_attention.causal_softmax_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(attention.native_attention, "causal_softmax_attention", native)
    y, s = layer(x, mode="chunk")
    assert keys == [5]                                  # T keys, not window + T
    y2, s2 = layer(x, s, mode="chunk")                  # begun: the buffer is read
    assert keys == [5, 6 + 5]
    monkeypatch.undo()
    ref, rs = layer(torch.cat([x, x], 1), mode="sequential")
    torch.testing.assert_close(torch.cat([y, y2], 1), ref)
    for a, b in zip(s2, rs):
        torch.testing.assert_close(a, b)
