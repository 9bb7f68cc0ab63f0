"""Forgetting attention (FoX, arXiv:2503.02130): fla's naive forgetting attention on the
layer's own tensors (full and windowed, whole and streamed through the cache), and the fact
that with every forget gate 1 it is the softmax attention of the `attention` layer on the
same weights."""

from __future__ import annotations

import pytest
import torch
from _twice import check_layer_twice

import rnnzoo
from rnnzoo.ops import backend


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_layer_equals_fla_naive_forgetting_attn(window, mode):
    naive = pytest.importorskip("fla.ops.forgetting_attn.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("forgetting_attention", d_model=16, num_heads=2, window=window,
                          max_len=32, qk_norm=True, use_output_gate=True).double()
    with torch.no_grad():
        layer.f_proj.bias.fill_(1.0)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, g = layer.op_inputs(x)
        o = naive.naive_forgetting_attn(q, k, v, g, scale=layer.head_dim ** -0.5,
                                        window_size=window)
        y_ref = layer.op_output(o.to(x.dtype), x)
        y, _ = layer(x, mode=mode)  # fla's naive computes in float32 whatever the input
        assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
        s, parts = None, []
        for a, b in [(0, 3), (3, 11), (11, 12), (12, 19)]:  # through the cache (and the ring)
            y_part, s = layer(x[:, a:b], s, mode=mode)
            parts.append(y_part)
        assert (torch.cat(parts, 1) - y).abs().max() < 1e-12 * y_ref.abs().max()


@pytest.mark.parametrize("window", [None, 4])
def test_forget_gates_one_is_softmax_attention(window):
    """f = sigmoid(60) = 1 in float64 (log f ~ -1e-26): FoX with rotary positions is the
    registered `attention` layer with the same q, k, v and output weights."""
    torch.manual_seed(1)
    fox = rnnzoo.create("forgetting_attention", d_model=8, num_heads=2, window=window,
                        max_len=24, rope_base=10000.0).double()
    att = rnnzoo.create("attention", d_model=8, num_heads=2, window=window, max_len=24).double()
    with torch.no_grad():
        att.qkv.weight.copy_(fox.qkv.weight)
        att.out_proj.weight.copy_(fox.out_proj.weight)
        fox.f_proj.weight.zero_()
        fox.f_proj.bias.fill_(60.0)
    x = torch.randn(3, 17, 8, dtype=torch.float64)
    for mode in fox.modes:
        y_fox, s_fox = fox(x[:, :9], mode=mode)
        y_att, s_att = att(x[:, :9], mode=mode)
        y2_fox, _ = fox(x[:, 9:], s_fox, mode=mode)
        y2_att, _ = att(x[:, 9:], s_att, mode=mode)
        assert (y_fox - y_att).abs().max() < 1e-12
        assert (y2_fox - y2_att).abs().max() < 1e-12
    with torch.no_grad():  # and a real forget gate is not softmax attention
        fox.f_proj.bias.fill_(0.0)
    assert (fox(x)[0] - att(x)[0]).abs().max() > 1e-3


def test_options_checked():
    with pytest.raises(ValueError, match="head_dim must be even with rotary positions"):
        rnnzoo.create("forgetting_attention", d_model=6, num_heads=2, rope_base=1e4)
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        rnnzoo.create("forgetting_attention", d_model=8, max_len=8)(torch.randn(1, 9, 8))
    with pytest.raises(TypeError, match="qk_norm"):
        rnnzoo.create("forgetting_attention", d_model=8, qk_norm="yes")



def test_sequential_second_derivative_on_the_torch_path():
    """The reference runs PyTorch's attention by its math form (the fused kernels have no
    double backward): differentiable twice in x and the parameters."""
    torch.manual_seed(0)
    layer = rnnzoo.create('forgetting_attention', **dict(d_model=4, num_heads=2, max_len=16, qk_norm=True,
                                                  use_output_gate=True)).double()
    with backend.force("torch"):
        check_layer_twice(layer, torch.randn(1, 3, 4, dtype=torch.float64,
                                             requires_grad=True), "sequential")
