"""The layer options the checkpoint maps added keep the layer contract: every mode equals the
reference, a split sequence equals the whole, step equals forward, and right padding leaves
each sequence's own outputs and state. (The conformance suite checks the default options.)"""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.hf.falcon_h1 import ParallelHybrid
from rnnzoo.hf.lfm2 import GatedShortConv
from rnnzoo.hf.mla import LatentAttention
from rnnzoo.hf.rwkv import ChannelMix, TimeMix
from rnnzoo.hf.xlstm import XLSTMLayer


def falcon_mixer(d_model, num_heads, d_inner, head_dim):
    """Falcon-H1's mixer: rnnzoo attention and mamba2 side by side."""
    return ParallelHybrid(
        rnnzoo.create("attention", d_model=d_model, num_heads=num_heads, num_kv_heads=1,
                      max_len=32),
        rnnzoo.create("mamba2", d_model=d_model, d_state=2, head_dim=head_dim, d_inner=d_inner,
                      d_conv=3, chunk_size=4, gated_norm=False))


CASES = [
    ("mamba", dict(d_state=3, d_conv=3, expand=1, dt_rank=2, chunk_size=4, bcdt_rms_eps=1e-6)),
    ("mamba", dict(d_state=3, d_conv=3, expand=1, dt_rank=2, chunk_size=4, bcdt_rms_eps=1e-6,
                   bcdt_rms_weight=True)),
    ("mamba2", dict(d_state=2, head_dim=2, expand=2, d_conv=3, chunk_size=4, n_groups=2,
                    norm_eps=1e-6)),
    # Falcon-H1's Mamba-2: its own width, no gated norm / the norm before the gate
    ("mamba2", dict(d_state=2, head_dim=3, d_inner=12, d_conv=3, chunk_size=4, n_groups=2,
                    gated_norm=False)),
    ("mamba2", dict(d_state=2, head_dim=3, d_inner=12, d_conv=3, chunk_size=4, n_groups=2,
                    norm_before_gate=True)),
    ("hawk", dict(d_rnn=6, num_heads=2, d_conv=3, gate_act="gelu_tanh", normalize_first=False)),
    ("attention", dict(num_heads=4, head_dim=4, num_kv_heads=2, rotary_dim=2, out_bias=True,
                       qk_norm_eps=1e-6, output_gate=True, max_len=32)),
    ("attention", dict(num_heads=2, head_dim=4, num_kv_heads=1, window=3, out_bias=True)),
    ("gated_deltanet", dict(num_heads=2, head_dim=3, expand_v=1, d_conv=2, chunk_size=4,
                            sqrt_eps=True)),
    ("gated_deltanet", dict(num_heads=4, num_key_heads=2, head_dim=2, expand_v=1, d_conv=2,
                            chunk_size=4)),
    ("kda", dict(num_heads=2, head_dim=3, d_conv=2, chunk_size=4, subchunk_size=2,
                 sqrt_eps=True)),
    ("attention", dict(num_heads=2, head_dim=4, num_kv_heads=1, rotary_dim=0, max_len=32)),
    (LatentAttention, dict(num_heads=2, kv_rank=3, nope_dim=2, rope_dim=2, v_dim=3, max_len=32)),
    (LatentAttention, dict(num_heads=2, kv_rank=3, nope_dim=4, rope_dim=2, v_dim=5, q_rank=3,
                           max_len=32)),
    (GatedShortConv, dict(d_conv=3)),
    (XLSTMLayer, dict(num_heads=2, qk_dim=4, v_dim=6, gate_soft_cap=3.0, chunk_size=4)),
    (TimeMix, dict(width=6)),
    (ChannelMix, dict(hidden=12)),
    ("lightning_attention", dict(num_heads=2, head_dim=3, layer_idx=1, num_layers=2,
                                 chunk_size=4, depth_eps=1e-5)),
    (falcon_mixer, dict(num_heads=2, d_inner=12, head_dim=3)),
]
IDS = [f"{getattr(n, '__name__', n)}-{i}" for i, (n, _) in enumerate(CASES)]


def make(name, options):
    """The registered layer `name`, or the layer class `name` (hf's own mixers)."""
    torch.manual_seed(0)
    layer = (rnnzoo.create(name, d_model=8, **options) if isinstance(name, str)
             else name(d_model=8, **options)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def flat(state):
    return [state] if isinstance(state, torch.Tensor) else [t for s in state for t in flat(s)]


def close(a, b):
    return all(torch.allclose(x, y, atol=1e-9, rtol=1e-7) for x, y in zip(flat(a), flat(b)))


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_option_keeps_the_contract(name, options):
    layer = make(name, options)
    x = torch.randn(2, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, s = layer(x, mode="sequential")
    for mode in layer.modes:
        y_m, s_m = layer(x, mode=mode)
        assert close(y, y_m) and close(s, s_m), mode
        y1, s1 = layer(x[:, :4], mode=mode)
        y2, s2 = layer(x[:, 4:], s1, mode=mode)
        assert close(y, torch.cat([y1, y2], 1)) and close(s, s2), mode
    state, ys = None, []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert close(y, torch.stack(ys, 1)) and close(s, state)
    lengths = torch.tensor([9, 5])
    y_p, s_p = layer(x, lengths=lengths)
    y_short, s_short = layer(x[1:, :5])
    assert close(y_p[1:, :5], y_short) and (y_p[1, 5:] == 0).all()
    assert close([t[1:] for t in flat(s_p)], flat(s_short))


def test_hawk_normalize_first_changes_only_the_first_step():
    on = make("hawk", dict(d_rnn=6, num_heads=2, d_conv=3))
    off = make("hawk", dict(d_rnn=6, num_heads=2, d_conv=3, normalize_first=False))
    x = torch.randn(1, 1, 8, dtype=torch.float64)
    assert not torch.allclose(on(x)[0], off(x)[0])  # the first step differs...
    state = on.init_state(1, dtype=torch.float64)
    later = (*state, torch.ones(1, dtype=torch.float64))  # ...a later one does not
    assert torch.allclose(on(x, state)[0], off(x, later)[0])


def test_mamba2_output_options_shape_the_layer():
    """d_inner sets the width apart from expand; gated_norm=False drops the norm's weight;
    norm_before_gate moves the gate after the norm (the same weights give other outputs)."""
    opts = dict(d_state=2, head_dim=3, d_inner=12, d_conv=3, chunk_size=4, n_groups=2)
    after = make("mamba2", {**opts, "norm_before_gate": True})
    before = make("mamba2", opts)
    assert after.out_proj.in_features == 12 and after.num_heads == 4
    before.load_state_dict(after.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert not torch.allclose(after(x)[0], before(x)[0])
    assert "norm_weight" not in dict(make("mamba2", {**opts, "gated_norm": False}).named_parameters())
