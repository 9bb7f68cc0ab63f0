"""DeltaProduct facts: two reflections per token rotate the state; n_h = 1 is Gated DeltaNet."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo
from rnnzoo.ops.chunk.delta import delta_product, delta_product_recurrent

OPS = [delta_product_recurrent, lambda *a, **kw: delta_product(*a, chunk_size=3, **kw)]


@pytest.mark.parametrize("op", OPS, ids=["recurrent", "chunk"])
def test_two_householder_reflections_per_token_rotate_the_state(op):
    """Siems et al. 2025: with beta = 2 and v = 0 each step is a reflection I - 2 k k^T; the
    product H(k2) H(k1) of reflections in lines at angle phi is a rotation by 2 phi (its sign
    fixes the order of the steps). After T tokens S = R(2 phi T) S_0, a rotation that no
    single delta-rule step (one reflection or a contraction) can express per token."""
    T, phi = 10, 0.3
    k1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    k2 = torch.tensor([math.cos(phi), math.sin(phi)], dtype=torch.float64)
    k = torch.stack([k1, k2]).expand(1, T, 2, 2)[:, :, :, None]      # (1, T, n_h=2, H=1, K=2)
    v = torch.zeros(1, T, 2, 1, 1, dtype=torch.float64)
    beta = torch.full((1, T, 2, 1), 2.0, dtype=torch.float64)
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, T, 1, 2)
    S0 = torch.tensor([[1.0], [0.0]], dtype=torch.float64)[None, None]  # (1, 1, 2, 1)
    o, S = op(q, k, v, beta, scale=1.0, initial_state=S0)
    angles = 2 * phi * torch.arange(1, T + 1, dtype=torch.float64)
    assert (o[0, :, 0, 0] - torch.cos(angles)).abs().max() < 1e-12   # first coordinate
    assert (S[0, 0, :, 0] - torch.stack([torch.cos(angles[-1]), torch.sin(angles[-1])])).abs().max() < 1e-12


def test_one_householder_step_is_gated_deltanet():
    torch.manual_seed(0)
    opts = dict(d_model=8, num_heads=2, head_dim=3, expand_v=2, d_conv=3, chunk_size=4)
    dp = rnnzoo.create("deltaproduct", num_householder=1, **opts).double()
    gdn = rnnzoo.create("gated_deltanet", **opts).double()
    with torch.no_grad():
        for p in dp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    gdn.load_state_dict(dp.state_dict())
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    for mode in dp.modes:
        y1, (S1, c1) = dp(x, mode=mode)
        y2, (S2, c2) = gdn(x, mode=mode)
        assert (y1 - y2).abs().max() < 1e-12 and (S1 - S2).abs().max() < 1e-12
