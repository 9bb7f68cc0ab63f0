"""DeltaFormer (arXiv:2505.19488): fla's naive DeltaFormer attention on the layer's own tensors
(whole and streamed through the cache of keys and residues), and the fact that with beta = 0
nothing is subtracted, so it is causal softmax attention on the same q, k, v."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_layer_equals_fla_naive_deltaformer(mode):
    pytest.importorskip("fla", reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    from peers.fla_deltaformer import naive_deltaformer_attn
    attn = naive_deltaformer_attn()
    torch.manual_seed(0)
    layer = rnnzoo.create("deltaformer", d_model=16, num_heads=2, max_len=32).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, beta = layer.op_inputs(x)
        y_ref = layer.op_output(attn(q, k, v, beta), x)
        y, _ = layer(x, mode=mode)  # fla's naive solves for the residues in float32
        assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
        s, parts = None, []
        for a, b in [(0, 1), (1, 9), (9, 21)]:
            y_part, s = layer(x[:, a:b], s, mode=mode)
            parts.append(y_part)
        assert (torch.cat(parts, 1) - y).abs().max() < 1e-12 * y.abs().max()


def test_beta_zero_is_softmax_attention():
    torch.manual_seed(1)
    layer = rnnzoo.create("deltaformer", d_model=8, num_heads=2, max_len=32).double()
    x = torch.randn(2, 15, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.b_proj.weight.zero_()
        layer.b_proj.bias.fill_(-1000.0)  # sigmoid(-1000) = 0 in float64
        q, k, v, _ = (t.transpose(1, 2) for t in layer.op_inputs(x))
        y_ref = layer.op_output(F.scaled_dot_product_attention(q, k, v, is_causal=True)
                                .transpose(1, 2), x)
        for mode in layer.modes:
            assert (layer(x, mode=mode)[0] - y_ref).abs().max() < 1e-12
        layer.b_proj.bias.fill_(0.0)  # beta = 1/2: the residues differ from the values
        assert (layer(x)[0] - y_ref).abs().max() > 1e-3


def test_options_checked():
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        rnnzoo.create("deltaformer", d_model=8, max_len=8)(torch.randn(1, 9, 8))
