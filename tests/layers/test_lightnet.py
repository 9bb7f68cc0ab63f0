"""LightNet (arXiv:2405.21022): fla's naive GLA on the paper's additive gate (a loop here) and,
on a CUDA device, fla's Triton LightNet ops, on the layer's own tensors; the fact: the state is a softmax over time of the values, per key
channel (the additive decay), in every mode, even with logits far beyond exp's range."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers.lightnet import additive_gate
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent


def _layer(dtype=torch.float32, **options):
    torch.manual_seed(0)
    layer = rnnzoo.create("lightnet", d_model=8, num_heads=2, expand_ratio=4,
                          gate_low_rank_dim=4, chunk_size=4, subchunk_size=2, **options)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer.to(dtype)


def _papers_gate(k, z0):
    """The paper's additive decay as a plain loop on the running sum s_t = s_{t-1} + e^{k_t}
    (s_0 = e^{z0}): keys e^{k_t} / s_t, log-decays log(s_{t-1} / s_t) (0 when s_{t-1} = 0)."""
    s, keys, decays = z0.exp(), [], []
    for k_t in k.unbind(1):
        s_new = s + k_t.exp()
        keys.append(k_t.exp() / s_new)
        decays.append(torch.where(s > 0, (s / s_new).log(), torch.zeros_like(s)))
        s = s_new
    return torch.stack(keys, 1), torch.stack(decays, 1), s.log()


def _starts(layer, B):
    S, z = layer.init_state(B, dtype=torch.float64)
    return [(S, z), (torch.randn_like(S), torch.randn_like(z))]


def test_layer_equals_fla_naive_gla_on_the_papers_additive_gate():
    """fla-core 0.6.0's naive recurrent GLA, fed the block's q, v and the keys and decays of
    the paper's running sum (a loop here), from a fresh state and from a random (S, z):
    outputs and both final states equal every mode of the layer."""
    naive = pytest.importorskip("fla.ops.gla.naive", reason="fla-core 0.6.0 is the oracle")
    layer = _layer(torch.float64)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    with torch.no_grad():
        q, k_logits, v = layer.op_inputs(x)
        for S0, z0 in _starts(layer, 2):
            k, g, z_ref = _papers_gate(k_logits, z0)
            o, S_ref = naive.naive_recurrent_gla(q.float(), k.float(), v.float(), g.float(),
                                                 initial_state=S0.float(),
                                                 output_final_state=True)
            y_ref = layer.op_output(o.double(), x)
            for mode in layer.modes:
                y, (S, z) = layer(x, (S0, z0), mode=mode)
                assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max(), mode
                assert (S - S_ref.double()).abs().max() < 1e-5 * S_ref.abs().max(), mode
                assert (z - z_ref).abs().max() < 1e-12 * z_ref.abs().max(), mode


@pytest.mark.parametrize("mode", ["sequential", "chunk"])
@pytest.mark.parametrize("logit_scale", [1.0, 300.0])
def test_state_is_a_softmax_over_time_of_the_values(mode, logit_scale):
    """From a fresh state, S_t = sum_{j<=t} e^{k_j} v_j^T / sum_{j<=t} e^{k_j} per key channel
    (the paper's additive decay), and z_t = log sum_{j<=t} e^{k_j}: checked at every t through
    the layer's own op with q = one-hot readers. Logits of size ~900 overflow exp even in float64, yet
    the running normalisation keeps both modes exact."""
    layer = _layer(torch.float64)
    torch.manual_seed(1)
    B, T, H, K, V = 1, 11, 2, 4, 4
    k = logit_scale * torch.randn(B, T, H, K, dtype=torch.float64)
    v = torch.randn(B, T, H, V, dtype=torch.float64)
    _, z0 = layer.init_state(B, dtype=torch.float64)
    kk, g, z = additive_gate(k, z0)
    assert torch.allclose(z, torch.logsumexp(k, 1), rtol=1e-12, atol=0)
    for c in range(K):  # read channel c of the state at every t
        q = torch.zeros(B, T, H, K, dtype=torch.float64)
        q[..., c] = 1
        if mode == "chunk":
            o, _ = gated_linear_attention(q, kk, v, g, scale=1.0, chunk_size=4, subchunk_size=2)
        else:
            o, _ = gated_linear_attention_recurrent(q, kk, v, g, scale=1.0)
        causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
        logits = k[..., c][:, None].expand(B, T, T, H)                 # (B, t, j, H): k_j
        a = torch.softmax(logits.masked_fill(~causal, float("-inf")), 2)
        expected = torch.einsum("btjh,bjhv->bthv", a, v)
        assert (o - expected).abs().max() < 1e-10, c


def test_fresh_state_and_options():
    layer = _layer()
    S, z = layer.init_state(3)
    assert S.shape == (3, 2, 4, 4) and z.shape == (3, 2, 4) and torch.isneginf(z).all()
    with pytest.raises(ValueError, match="expand_ratio must be a positive int"):
        rnnzoo.create("lightnet", d_model=8, expand_ratio=0)
    with pytest.raises(ValueError, match="must be a multiple of num_heads"):
        rnnzoo.create("lightnet", d_model=6, num_heads=4)


@pytest.mark.parametrize("rank", [2, 4, 7])
@pytest.mark.parametrize("mode", ["sequential", "chunk"])
def test_stacked_input_product_equals_the_separate_projections(rank, mode):
    """The layer's one product of x with [W_qk; W_v; W_g2 W_g1] (the gate's pair folded
    when 2 rank >= d_model; rank 2 at d_model 8 keeps the two products) against the pieces
    run apart: qk_proj, v_proj, the additive gate, the recurrence and the norm gate on
    g_proj(x) through its two Linear layers; outputs, states and every parameter's gradient
    in float64."""
    torch.manual_seed(0)
    layer = rnnzoo.create("lightnet", d_model=8, num_heads=2, gate_low_rank_dim=rank,
                          chunk_size=4, subchunk_size=2).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    S0, z0 = layer.init_state(2, dtype=torch.float64)
    params = list(layer.parameters())
    y, (S, z) = layer(x, (S0, z0), mode=mode)
    got = [y, S, z, *torch.autograd.grad((y * y).sum() + S.sum(), params)]
    q, k_logits, v = layer.op_inputs(x)
    k, g, z_ref = additive_gate(k_logits, z0)
    o, S_ref = gated_linear_attention_recurrent(q, k, v, g, scale=layer.key_dim ** -0.5,
                                                initial_state=S0)
    from rnnzoo.ops.native.head_norm import rms_gate
    h = rms_gate(o.flatten(2), layer.norm_weight, 8, layer.norm_eps,
                 layer.g_proj[1](layer.g_proj[0](x)), "silu")
    y_ref = layer.o_proj(h)
    want = [y_ref, S_ref, z_ref,
            *torch.autograd.grad((y_ref * y_ref).sum() + S_ref.sum(), params)]
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max().clamp(min=1)
