"""PaTH attention (arXiv:2505.16381): fla's naive PaTH attention on the layer's own tensors
(whole and streamed through the cache of transformed keys), and the fact that with identity
reflections (beta = 0) it is softmax attention without positions on the same q, k, v."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo


@pytest.mark.parametrize("mode", ["sequential", "chunk"])
def test_layer_equals_fla_naive_path_attn(mode):
    naive = pytest.importorskip("fla.ops.path_attn.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=16, num_heads=2, max_len=32,
                          chunk_size=4).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, w, beta = layer.op_inputs(x)
        o = naive.naive_path_attn(q, k, v, w, beta, torch.zeros_like(beta),
                                  scale=layer.head_dim ** -0.5, chunk_size=4)
        y_ref = layer.op_output(o.to(x.dtype), x)
        y, _ = layer(x, mode=mode)  # fla's naive computes in float32
        assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
        s, parts = None, []
        for a, b in [(0, 1), (1, 6), (6, 13)]:
            y_part, s = layer(x[:, a:b], s, mode=mode)
            parts.append(y_part)
        assert (torch.cat(parts, 1) - y).abs().max() < 1e-12 * y.abs().max()


def test_identity_reflections_give_softmax_attention():
    torch.manual_seed(1)
    layer = rnnzoo.create("path_attention", d_model=8, num_heads=2, max_len=32,
                          chunk_size=4).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.b_proj.weight.zero_()
        layer.b_proj.bias.fill_(-1000.0)  # beta = 2 sigmoid(-1000) = 0: H_t = I
        q, k, v, _, _ = (t.transpose(1, 2) for t in layer.op_inputs(x))
        y_ref = layer.op_output(F.scaled_dot_product_attention(q, k, v, is_causal=True)
                                .transpose(1, 2), x)
        for mode in layer.modes:
            y, (k_cache, _, _) = layer(x, mode=mode)
            assert (y - y_ref).abs().max() < 1e-12
            assert (k_cache[:, :, :11] - k).abs().max() < 1e-12   # keys never transformed
        layer.b_proj.bias.fill_(0.0)  # beta = 1: reflections move the keys, scores change
        assert (layer(x)[0] - y_ref).abs().max() > 1e-3


def test_options_checked():
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        rnnzoo.create("path_attention", d_model=8, max_len=8)(torch.randn(1, 9, 8))



@pytest.mark.parametrize("mode,T", [("sequential", 7), ("chunk", 7), ("chunk", 8)])
def test_no_state_equals_the_zero_state(mode, T):
    """state None (the caches as one zero expanded: `_check_or_init_state`) gives the
    outputs, state and gradients of `init_state`'s real zeros, in every path (T = 8: the
    fused C path of a fresh sequence; 7: the unfused chunk form), and the returned caches
    are tensors of their own (written in place without error)."""
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=8, num_heads=2, max_len=12,
                          chunk_size=4).double()
    x = torch.randn(2, T, 8, dtype=torch.float64, requires_grad=True)
    res = []
    for state in (None, layer.init_state(2, dtype=torch.float64)):
        y, (kc, vc, pos) = layer(x, state, mode=mode)
        loss = y.sin().sum() + (kc * kc).sum() + (vc ** 3).sum()
        grads = torch.autograd.grad(loss, [x, *layer.parameters()])
        res.append([t.detach().clone() for t in (y, kc, vc, pos, *grads)])
        for t in (kc, vc):
            assert 0 not in t.stride()
            t.detach().add_(1)  # its own memory
    for a, b in zip(*res):
        assert torch.allclose(a, b, rtol=0, atol=1e-13)
