"""GLA (Yang et al. 2024): the paper's gated recurrence written out, and a long sequence."""

import math

import torch
import torch.nn.functional as F

import rnnzoo


def test_equals_the_papers_recurrence_with_low_rank_gate_and_normaliser_16():
    """alpha = sigmoid(x W1 W2 + b)^(1/16); S_t = diag(alpha_t) S_{t-1} + k_t v_t^T;
    o = S^T q / sqrt(d_k); y = (swish(x W_r + b_r) * RMSNorm_h(o)) W_O."""
    torch.manual_seed(0)
    H, d = 2, 8
    layer = rnnzoo.create("gla", d_model=d, num_heads=H, chunk_size=8, subchunk_size=4).double()
    K, V = layer.key_dim, layer.value_dim
    x = torch.randn(2, 21, d, dtype=torch.float64)
    q, k = layer.qk(x).view(2, 21, 2, H, K).unbind(2)
    v = layer.v(x).view(2, 21, H, V)
    alpha = torch.sigmoid(layer.gate_up(layer.gate_down(x))).view(2, 21, H, K) ** (1 / 16)
    S, outs = torch.zeros(2, H, K, V, dtype=torch.float64), []
    for t in range(21):
        S = alpha[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] / math.sqrt(K), S))
    o = torch.stack(outs, 1)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
    want = layer.out_proj(F.silu(layer.out_gate(x)) * o.reshape(2, 21, H * V))
    for mode in layer.modes:
        y, s = layer(x, mode=mode)
        assert (y - want).abs().max() < 1e-12 and (s - S).abs().max() < 1e-12


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("gla", d_model=8, num_heads=2)
    with torch.no_grad():
        y, s = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
