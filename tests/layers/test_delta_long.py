"""T = 65536 in float32 without NaN for every matrix layer made of heads of a chosen
head_dim (the delta-rule layers, linear attention, RetNet; tiny widths, chunk mode),
with negative eigenvalues where the layer offers them."""

from __future__ import annotations

import inspect

import pytest
import torch

import rnnzoo


def _options(info) -> set[str]:
    return set(inspect.signature(info.cls).parameters)


NAMES = [i.name for i in rnnzoo.list_layers("matrix")
         if "chunk" in i.modes and {"num_heads", "head_dim", "chunk_size"} <= _options(i)]


@pytest.mark.parametrize("name", NAMES)
def test_long_sequence_stays_finite(name):
    torch.manual_seed(0)
    kw = dict(num_heads=2, head_dim=4, chunk_size=64)
    if "allow_neg_eigval" in _options(rnnzoo.registry.get_layer_info(name)):
        kw["allow_neg_eigval"] = True
    layer = rnnzoo.create(name, d_model=8, **kw)
    x = 3 * torch.randn(1, 65536, 8)
    with torch.no_grad():
        y, state = layer(x, mode="chunk")
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(s).all() for s in state)
