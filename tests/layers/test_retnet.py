"""RetNet (Sun et al. 2023): retention's parallel closed form, and a long-sequence check."""

import math

import torch
import torch.nn.functional as F

import rnnzoo


def test_gammas_and_parallel_closed_form():
    """gamma_h = 1 - 2^(-5-h); O = (Q K^T / sqrt(d) * D) V with D_nm = gamma^(n-m) [n >= m],
    then GroupNorm per head, swish gate and W_O (eqs. 5 and 8)."""
    torch.manual_seed(0)
    H, K = 3, 4
    layer = rnnzoo.create("retnet", d_model=12, num_heads=H, chunk_size=4).double()
    gamma = torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128], dtype=torch.float64)
    assert torch.allclose(layer.log_gamma.exp(), gamma)
    x = torch.randn(2, 13, 12, dtype=torch.float64)
    q, k = layer.qk(x).view(2, 13, 2, H, K).unbind(2)
    v = layer.v(x).view(2, 13, H, 2 * K)
    n = torch.arange(13, dtype=torch.float64)
    D = gamma[:, None, None] ** (n[:, None] - n[None, :]).clamp(min=0) * (n[:, None] >= n[None, :])
    o = torch.einsum("bnhd,bmhd,hnm,bmhe->bnhe", q / math.sqrt(K), k, D, v)
    o = F.group_norm(o.reshape(26, H * 2 * K), H, eps=1e-5).view(2, 13, H, 2 * K)
    o = o * layer.norm.weight + layer.norm.bias
    want = layer.out_proj(F.silu(layer.gate(x)) * o.reshape(2, 13, -1))
    for mode in layer.modes:
        assert (layer(x, mode=mode)[0] - want).abs().max() < 1e-12


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("retnet", d_model=8, num_heads=2)
    with torch.no_grad():
        y, s = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
