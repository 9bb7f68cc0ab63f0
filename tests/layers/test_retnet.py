"""RetNet (Sun et al. 2023): retention's parallel closed form, and a long-sequence check."""

import math

import torch
import torch.nn.functional as F

import rnnzoo


def test_gammas_and_parallel_closed_form():
    """gamma_h = 1 - 2^(-5-h); q, k rotated by e^{i n theta}; O = (Q K^T / sqrt(d) * D) V
    with D_nm = gamma^(n-m) [n >= m], then GroupNorm per head, swish gate, W_O (eqs. 3-8)."""
    torch.manual_seed(0)
    H, K = 3, 4
    layer = rnnzoo.create("retnet", d_model=12, num_heads=H, chunk_size=4).double()
    gamma = torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128], dtype=torch.float64)
    assert torch.allclose(layer.log_gamma.exp(), gamma)
    x = torch.randn(2, 13, 12, dtype=torch.float64)
    q, k = layer.qk(x).view(2, 13, 2, H, K).unbind(2)
    # xPos rotation as complex numbers: pairs (2j, 2j+1) times e^{i n theta_j}
    theta = 1 / 10000 ** torch.linspace(0, 1, K // 2, dtype=torch.float64)
    phase = torch.polar(torch.ones(13, K // 2, dtype=torch.float64),
                        torch.arange(13.0, dtype=torch.float64)[:, None] * theta)[:, None]
    q, k = (torch.view_as_real(torch.view_as_complex(t.unflatten(-1, (K // 2, 2))) * phase)
            .flatten(-2) for t in (q, k))
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
        y, (s, position) = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all() and position.item() == 65536


def test_scores_depend_on_relative_position_only():
    """Theta_n conj(Theta_m) = e^{i (n - m) theta}: from an empty memory, starting the
    sequence at position 1000 instead of 0 changes nothing."""
    torch.manual_seed(0)
    layer = rnnzoo.create("retnet", d_model=8, num_heads=2, chunk_size=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    S0, _ = layer.init_state(2, dtype=torch.float64)
    y0, _ = layer(x, (S0, torch.zeros(2, dtype=torch.float64)))
    y1, (_, pos) = layer(x, (S0, torch.full((2,), 1000.0, dtype=torch.float64)))
    assert (y0 - y1).abs().max() < 1e-10 and pos.tolist() == [1009.0, 1009.0]
