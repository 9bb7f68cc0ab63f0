"""Aaren (attention as an RNN, arXiv:2405.13956): no peer code exists, so the oracle is the
paper's definition written out, softmax attention of the learned query over each prefix; the
fact is the paper's: the parallel prefix scan equals the step-by-step RNN, also where the
scores are so large that unstabilised sums would overflow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo


def prefix_attention(layer, x):
    """o_t = softmax_{i<=t}(q . k_i / sqrt(Dh)) v_i, one prefix at a time, then W_o."""
    B, T, _ = x.shape
    H, D = layer.num_heads, layer.head_dim
    k, v = layer.kv_proj(x).view(B, T, 2, H, D).unbind(2)
    outs = []
    for t in range(1, T + 1):
        q = layer.query[None, :, None, :].expand(B, H, 1, D)
        o = F.scaled_dot_product_attention(q, k[:, :t].transpose(1, 2), v[:, :t].transpose(1, 2))
        outs.append(o[:, :, 0])
    return layer.o_proj(torch.stack(outs, 1).flatten(2))


@pytest.mark.parametrize("mode", ["sequential", "scan"])
def test_layer_equals_attention_over_each_prefix(mode):
    torch.manual_seed(0)
    layer = rnnzoo.create("aaren", d_model=12, num_heads=3).double()
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    with torch.no_grad():
        y_ref = prefix_attention(layer, x)
        y, _ = layer(x, mode=mode)
        assert (y - y_ref).abs().max() < 1e-12 * y_ref.abs().max()
        y1, s = layer(x[:, :13], mode=mode)             # streamed: the state carries the prefix
        y2, _ = layer(x[:, 13:], s, mode=mode)
        assert (torch.cat([y1, y2], 1) - y_ref).abs().max() < 1e-12 * y_ref.abs().max()


def test_prefix_scan_equals_the_rnn_step_by_step_even_with_huge_scores():
    torch.manual_seed(1)
    layer = rnnzoo.create("aaren", d_model=8, num_heads=2)
    with torch.no_grad():
        layer.query.mul_(1e4)                      # scores ~ 1e4: exp would overflow float32
    x = torch.randn(3, 64, 8)
    with torch.no_grad():
        y_scan, s_scan = layer(x, mode="scan")
        state, ys = None, []
        for x_t in x.unbind(1):
            y_t, state = layer.step(x_t, state)
            ys.append(y_t)
        y_rnn = torch.stack(ys, 1)
        assert torch.isfinite(y_scan).all()
        assert (y_scan - y_rnn).abs().max() < 1e-5 * y_rnn.abs().max()
        for a, b in zip(s_scan, state):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
        # at such scores each prefix's softmax is a hard max: o_t is the value at the argmax
        k, v = layer.kv_proj(x).view(3, 64, 2, 2, 4).unbind(2)
        best = (k * layer.query).sum(-1).cummax(1).indices                    # (B, T, H)
        hard = v.gather(1, best[..., None].expand(-1, -1, -1, 4))
        assert (y_scan - layer.o_proj(hard.flatten(2))).abs().max() < 1e-4


def test_options_checked():
    with pytest.raises(ValueError, match="num_heads must be"):
        rnnzoo.create("aaren", d_model=8, num_heads=0)
