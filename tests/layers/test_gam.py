"""Gated Associative Memory (arXiv:2509.00605): no peer code is installed, so the oracle is
the paper's token mixer written as a plain loop (causal depthwise conv, softmax retrieval from
the memory bank, two sigmoid gates); the fact is the paper's O(N) claim: the memory pathway
reads the bank, not other tokens, so a token reaches exactly the next d_conv - 1 outputs and
no further."""

from __future__ import annotations

import pytest
import torch

import rnnzoo


def gam_loop(layer, x):
    B, T, D = x.shape
    K = layer.conv.d_conv
    ys = []
    for t in range(T):
        local = layer.conv.bias.clone().expand(B, D)
        for k in range(K):
            s = t - K + 1 + k
            if s >= 0:
                local = local + layer.conv.weight[:, k] * x[:, s]
        scores = torch.stack([(x[:, t] * m).sum(-1) for m in layer.memory], -1)   # (B, M)
        w = scores.softmax(-1)
        glob = sum(w[:, i, None] * layer.memory[i] for i in range(layer.num_slots))
        g = torch.sigmoid(layer.gate_proj(x[:, t]))
        ys.append(layer.o_proj(g[:, :D] * local + g[:, D:] * glob))
    return torch.stack(ys, 1)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_layer_equals_the_paper_written_as_a_loop(mode):
    torch.manual_seed(0)
    layer = rnnzoo.create("gam", d_model=6, num_slots=5, d_conv=3).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    with torch.no_grad():
        y_ref = gam_loop(layer, x)
        y, _ = layer(x, mode=mode)
        assert (y - y_ref).abs().max() < 1e-12 * y_ref.abs().max()
        y1, s = layer(x[:, :4], mode=mode)
        y2, _ = layer(x[:, 4:], s, mode=mode)
        assert (torch.cat([y1, y2], 1) - y_ref).abs().max() < 1e-12 * y_ref.abs().max()


@pytest.mark.parametrize("d_conv", [1, 4])
def test_a_token_reaches_exactly_the_next_d_conv_minus_one_outputs(d_conv):
    torch.manual_seed(1)
    layer = rnnzoo.create("gam", d_model=8, num_slots=16, d_conv=d_conv).double()
    x = torch.randn(1, 20, 8, dtype=torch.float64, requires_grad=True)
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        (g,) = torch.autograd.grad(y[0, 15].sum(), x)
        reach = g[0].abs().sum(-1) > 0
        assert reach.nonzero().squeeze(1).tolist() == list(range(16 - d_conv, 16))


def test_options_checked():
    with pytest.raises(ValueError, match="num_slots must be"):
        rnnzoo.create("gam", d_model=8, num_slots=0)
    with pytest.raises(ValueError, match="d_conv must be"):
        rnnzoo.create("gam", d_model=8, d_conv=0)
