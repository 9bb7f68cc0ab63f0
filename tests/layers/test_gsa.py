"""Gated Slot Attention (arXiv:2409.07146): fla's naive recurrent GSA on the layer's own
tensors (from a state, final states too), and the facts that the state is num_slots x
head_dim a head whatever the length, and that each slot is a running average of the keys
(weights alpha and 1 - alpha), so it never leaves their range."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.gsa import gated_slot_attention


@pytest.mark.parametrize("mode", ["sequential", "chunk"])
def test_layer_equals_fla_naive_gsa(mode):
    naive = pytest.importorskip("fla.ops.gsa.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("gsa", d_model=16, num_heads=2, num_slots=5, chunk_size=8,
                          gate_logit_normalizer=2.0)
    x = torch.randn(2, 21, 16)
    state = (0.1 * torch.randn(2, 2, 8, 5), 0.1 * torch.randn(2, 2, 5, 8))
    with torch.no_grad():
        q, k, v, s, g = layer.op_inputs(x)
        o, (hk, hv) = naive.naive_recurrent_gsa(q, k, v, s, g, initial_state=state,
                                                output_final_state=True)
        y_ref = layer.op_output(o, x)
        y, (hk_y, hv_y) = layer(x, state, mode=mode)
    assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
    assert (hk_y - hk).abs().max() < 1e-5 * hk.abs().max()
    assert (hv_y - hv).abs().max() < 1e-5 * hv.abs().max()


def test_state_is_slots_by_head_dim_whatever_the_length():
    torch.manual_seed(1)
    layer = rnnzoo.create("gsa", d_model=8, num_heads=2, num_slots=3, chunk_size=16)
    for T in (1, 16, 300):
        hk, hv = layer(torch.randn(2, T, 8))[1]
        assert hk.shape == (2, 2, 4, 3) and hv.shape == (2, 2, 3, 4)


@pytest.mark.parametrize("mode", ["sequential", "chunk"])
def test_slots_are_running_averages_of_the_keys_and_values(mode):
    """From an empty memory, slot m after step t is sum_s (1 - alpha_sm) prod_{s<l<=t}
    alpha_lm k_s: weights in [0, 1) that sum to 1 - prod alpha <= 1, so every entry lies
    within the keys' (values') range, stretched toward 0; and a slot whose alpha is 1 at
    every step stays empty."""
    torch.manual_seed(2)
    B, T, H, K, M = 2, 40, 2, 3, 4
    q, k, v = torch.randn(3, B, T, H, K, dtype=torch.float64).unbind(0)
    log_alpha = -torch.rand(B, T, H, M, dtype=torch.float64) * 2
    log_alpha[..., 0] = 0.0
    s = -torch.expm1(log_alpha)
    _, (hk, hv) = gated_slot_attention(q, k, v, s, log_alpha, mode=mode, chunk_size=8)
    for mem, src in ((hk.transpose(-1, -2), k), (hv, v)):          # (B, H, M, K)
        hi = src.amax(1).clamp(min=0)[:, :, None]                     # (B, H, 1, K)
        lo = src.amin(1).clamp(max=0)[:, :, None]
        assert (mem <= hi + 1e-12).all() and (mem >= lo - 1e-12).all()
        assert mem[:, :, 0].abs().max() == 0
        assert mem[:, :, 1:].abs().max() > 0.1
    # the final key slots are the exponential moving averages computed directly
    w = s * torch.cat([log_alpha[:, 1:].flip(1).cumsum(1).flip(1),
                       torch.zeros_like(log_alpha[:, :1])], 1).exp()  # (B, T, H, M)
    assert (hk - torch.einsum("bthm,bthk->bhkm", w, k)).abs().max() < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match="num_slots must be"):
        rnnzoo.create("gsa", d_model=8, num_slots=0)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        rnnzoo.create("gsa", d_model=8, feature_map="relu")
    with pytest.raises(ValueError, match="gate_logit_normalizer"):
        rnnzoo.create("gsa", d_model=8, gate_logit_normalizer=0.0)
