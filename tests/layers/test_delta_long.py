"""T = 65536 in float32 without NaN for every delta-rule layer (tiny widths, chunk mode)."""

from __future__ import annotations

import pytest
import torch

import rnnzoo


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "deltaproduct", "rwkv7"])
def test_long_sequence_stays_finite(name):
    torch.manual_seed(0)
    kw = dict(num_heads=2, head_dim=4, chunk_size=64)
    if name in ("deltanet", "gated_deltanet", "deltaproduct"):
        kw["allow_neg_eigval"] = True
    layer = rnnzoo.create(name, d_model=8, **kw)
    x = 3 * torch.randn(1, 65536, 8)
    with torch.no_grad():
        y, state = layer(x, mode="chunk")
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(s).all() for s in state)
