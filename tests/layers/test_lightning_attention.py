"""Lightning attention (MiniMax-01, arXiv:2501.08313): fla's naive simple-GLA (the scalar-decay
linear attention) on the layer's own tensors, and the fixed per-head decays read off the
output of a one-hot input in closed form."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo


def test_layer_equals_fla_naive_simple_gla():
    naive = pytest.importorskip("fla.ops.simple_gla.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("lightning_attention", d_model=16, num_heads=4, chunk_size=8,
                          layer_idx=1, num_layers=4)
    x = torch.randn(2, 24, 16)
    S0 = 0.1 * torch.randn(2, 4, 4, 4)
    q, k, v, g = layer.op_inputs(x)
    with torch.no_grad():
        o_rec, s_rec = naive.naive_recurrent_simple_gla(q, k, v, g, scale=1.0,
                                                        initial_state=S0.clone())
        o_chk, s_chk = naive.naive_chunk_simple_gla(q, k, v, g, scale=1.0, chunk_size=8,
                                                    initial_state=S0.clone(),
                                                    output_final_state=True)
        for mode in layer.modes:
            y, s = layer(x, S0, mode=mode)
            for o_ref, s_ref in ((o_rec, s_rec), (o_chk, s_chk)):
                y_ref = layer.op_output(o_ref.to(x.dtype), x)
                assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
                assert (s - s_ref).abs().max() < 1e-5 * s_ref.abs().max()


def one_hot_layer(layer_idx=0, num_layers=1):
    """8 heads of width 1, d_model 8, inputs (impulse, 1, 0, ...): q = silu(1) always, k = v =
    silu(1) at the impulse and 0 after; no gate weight (sigmoid(0) = 1/2), W_o = I."""
    layer = rnnzoo.create("lightning_attention", d_model=8, num_heads=8, head_dim=1,
                          layer_idx=layer_idx, num_layers=num_layers).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.qkv_proj.weight[0:8, 1] = 1.0     # q
        layer.qkv_proj.weight[8:24, 0] = 1.0    # k, v
        layer.norm_weight.fill_(1.0)
        layer.o_proj.weight.copy_(torch.eye(8))
    return layer


@pytest.mark.parametrize("layer_idx,num_layers", [(0, 1), (2, 5)])
def test_one_hot_input_decays_by_the_fixed_rate_of_each_head(layer_idx, num_layers):
    """After an impulse at t = 0 head h holds lambda_h^t k v, lambda_h = exp(-s_h) with
    MiniMax's s_h = 2^-(h+1) (H = 8: 1/2, 1/4, ..., 1/256) times 1 - l/(L - 1) + 1e-5, so
    log(y_{t,h} / y_{t,0}) = (s_0 - s_h) t exactly (the RMSNorm over heads cancels);
    at t = 0 every head reads the same value."""
    layer = one_hot_layer(layer_idx, num_layers)
    T = 30
    x = torch.zeros(1, T, 8, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    x[0, :, 1] = 1.0
    depth = 1.0 if num_layers == 1 else 1 - layer_idx / (num_layers - 1) + 1e-5
    s = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256],
                     dtype=torch.float64) * depth
    t = torch.arange(T, dtype=torch.float64)[:, None]
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert (y[0, 0] - y[0, 0, 0]).abs().max() < 1e-14
        assert (y[0] / y[0, :, :1]).log().sub((s[0] - s) * t).abs().max() < 1e-10
    with torch.no_grad():
        y1, _ = layer.step(x[:, 0])
    o = (1 / (1 + math.exp(-1))) ** 3                  # q k v = silu(1)^3 in every head
    assert abs(float(y1[0, 0]) - 0.5 * o / math.sqrt(o * o + 1e-6)) < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match=r"layer_idx must be an int in \[0, num_layers=2\)"):
        rnnzoo.create("lightning_attention", d_model=8, layer_idx=2, num_layers=2)
    with pytest.raises(ValueError, match="num_layers must be"):
        rnnzoo.create("lightning_attention", d_model=8, num_layers=0)
