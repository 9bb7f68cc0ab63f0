"""Gated DeltaNet facts: an open gate is DeltaNet (with the output gate), a closed gate forgets."""

from __future__ import annotations

import torch

import rnnzoo


def pair(seed=0):
    torch.manual_seed(seed)
    opts = dict(d_model=8, num_heads=2, head_dim=3, expand_v=2, d_conv=3, chunk_size=4)
    gdn = rnnzoo.create("gated_deltanet", **opts).double()
    dn = rnnzoo.create("deltanet", output_gate=True, **opts).double()
    with torch.no_grad():
        for p in gdn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    dn.load_state_dict(gdn.state_dict(), strict=False)  # DeltaNet has no a_proj / A_log / dt_bias
    return gdn, dn


def test_open_gate_is_deltanet():
    """alpha = exp(-exp(A_log) softplus(.)) = 1 when exp(A_log) = 0: the gated delta rule
    reduces to the delta rule (Yang, Kautz & Hatamizadeh 2025, section 3)."""
    gdn, dn = pair()
    with torch.no_grad():
        gdn.A_log.fill_(-1e4)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    for mode in gdn.modes:
        y_g, (S_g, _) = gdn(x, mode=mode)
        y_d, (S_d, _) = dn(x, mode=mode)
        assert (y_g - y_d).abs().max() < 1e-12 and (S_g - S_d).abs().max() < 1e-12


def test_closed_gate_forgets_the_past():
    """A gate of alpha = 0 at a token erases the matrix memory: from the next token on, the
    state no longer depends on anything before it (only the short conv still sees its window)."""
    gdn, _ = pair()
    with torch.no_grad():
        gdn.A_log.fill_(12.0)   # exp(A_log) softplus(.) ~ 1.6e5 * softplus: alpha underflows to 0
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :6] = torch.randn(2, 6, 8, dtype=torch.float64)   # a different past
    for mode in gdn.modes:
        _, (S1, _) = gdn(x, mode=mode)
        _, (S2, _) = gdn(x2, mode=mode)
        assert (S1 - S2).abs().max() < 1e-12
        assert torch.isfinite(S1).all()
