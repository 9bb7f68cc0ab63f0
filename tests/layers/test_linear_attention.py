"""Linear attention (Katharopoulos et al. 2020): a fact and a long-sequence check."""

import torch
import torch.nn.functional as F

import rnnzoo


def test_equals_naive_causal_attention_with_elu_feature_map():
    """y = W_o [sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j)], phi = elu + 1."""
    torch.manual_seed(0)
    layer = rnnzoo.create("linear_attention", d_model=8, num_heads=2, chunk_size=4).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    q, k, v = layer.qkv(x).view(2, 13, 3, 2, 4).unbind(2)
    scores = torch.einsum("bihd,bjhd->bhij", F.elu(q) + 1, F.elu(k) + 1).tril()
    o = torch.einsum("bhij,bjhd->bihd", scores / scores.sum(-1, keepdim=True), v)
    want = layer.out_proj(o.reshape(2, 13, 8))
    for mode in layer.modes:
        assert (layer(x, mode=mode)[0] - want).abs().max() < 1e-5  # eps = 1e-6 in the normaliser


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("linear_attention", d_model=8, num_heads=2)
    with torch.no_grad():
        y, s = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
