"""HGRN (Qin et al. 2023): the forget gate never falls below the layer's lower bound."""

import pytest
import torch

import rnnzoo


def test_forget_gate_is_at_least_the_layer_bound_and_bounds_grow_with_depth():
    torch.manual_seed(0)
    L = 4
    layers = [rnnzoo.create("hgrn", d_model=8, layer_idx=k, num_layers=L).double() for k in range(L)]
    x = 1000 * torch.randn(2, 50, 8, dtype=torch.float64)  # saturates sigma(W_f x) to 0 and 1
    prev_max = -1.0
    for k, layer in enumerate(layers):
        with torch.no_grad():
            layer.bound_logit.normal_(0, 3)
        gamma = layer.lower_bound(torch.float64)
        assert (gamma >= k / L).all() and (gamma < (k + 1) / L).all()
        assert gamma.min() >= prev_max  # monotone in depth
        prev_max = gamma.max()
        lam, keep_in, _, _ = layer.gates(x)
        assert (lam >= gamma - 1e-12).all() and (lam <= 1).all()
        assert (lam - gamma).abs().min() < 1e-12       # the bound is reached
        assert torch.allclose(lam + keep_in, torch.ones_like(lam))


def test_top_layer_remembers_longer():
    """With input only at t = 0, the state decays at least as gamma^t: a high bound keeps it."""
    torch.manual_seed(0)
    low = rnnzoo.create("hgrn", d_model=4, layer_idx=0, num_layers=4).double()
    high = rnnzoo.create("hgrn", d_model=4, layer_idx=3, num_layers=4).double()
    for layer in (low, high):
        with torch.no_grad():
            layer.in_proj.weight[:8] = 0.0
            layer.in_proj.bias[:4] = 0.0      # i = silu(0) = 0: nothing is written
            layer.in_proj.bias[4:8] = -30.0  # forget gate at its bound
    h0 = torch.ones(1, 4, dtype=torch.float64)
    x = torch.zeros(1, 20, 4, dtype=torch.float64)
    _, h_low = low(x, h0)
    _, h_high = high(x, h0)
    assert torch.allclose(h_high, high.lower_bound(torch.float64) ** 20)
    assert (h_high > 1e3 * h_low).all()


def test_bad_options():
    with pytest.raises(ValueError, match="layer_idx must be < num_layers=2, got 2"):
        rnnzoo.create("hgrn", d_model=4, layer_idx=2, num_layers=2)
