"""Hawk / RG-LRU (De et al. 2024): a_t = a^(c r_t) with c = 8, and the sqrt(1 - a_t^2)
normalisation that keeps the state's variance at the input's."""

import pytest
import torch

import rnnzoo


def test_recurrence_gate_is_a_power_c_r():
    torch.manual_seed(0)
    layer = rnnzoo.create("hawk", d_model=8, d_rnn=12, num_heads=3).double()
    assert layer.gate_scale == 8.0
    a = torch.sigmoid(layer.a_logit)
    assert ((a ** 8 >= 0.9 - 1e-9) & (a ** 8 <= 0.999 + 1e-9)).all()  # initialisation
    u = torch.randn(2, 20, 12, dtype=torch.float64)
    a_t, _ = layer.rg_lru_coefficients(u)
    heads = u.view(2, 20, 3, 4)
    r = torch.sigmoid(torch.einsum("bthi,hij->bthj", heads, layer.gate_weight[0]).reshape(2, 20, 12)
                      + layer.gate_bias[0])
    assert torch.allclose(a_t, a ** (8 * r), rtol=1e-12)
    assert ((a_t >= a ** 8) & (a_t <= 1)).all()


@pytest.mark.parametrize("num_heads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gates_are_the_block_diagonal_product(num_heads, dtype):
    """r and i from W_a, W_x per head (num_heads=1: one stacked product through oneDNN in
    float32), their biases, and b = sqrt(1 - a_t^2) i u; values and gradients."""
    torch.manual_seed(0)
    layer = rnnzoo.create("hawk", d_model=8, d_rnn=12, num_heads=num_heads).to(dtype)
    with torch.no_grad():
        layer.gate_bias.normal_()
    u = torch.randn(2, 7, 12, dtype=dtype, requires_grad=True)
    a_t, b_t = layer.rg_lru_coefficients(u)
    heads = u.view(2, 7, num_heads, -1)
    r, i = (torch.sigmoid(torch.einsum("bthi,hij->bthj", heads, layer.gate_weight[g]).reshape(2, 7, 12)
                          + layer.gate_bias[g]) for g in (0, 1))
    a_ref = torch.sigmoid(layer.a_logit) ** (8 * r)
    b_ref = torch.sqrt(1 - a_ref ** 2) * i * u
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_t, a_ref, **tol)
    torch.testing.assert_close(b_t, b_ref, **tol)
    w = torch.randn_like(b_t)
    params = (u, layer.gate_weight, layer.gate_bias)
    got = torch.autograd.grad((a_t * w + b_t * w.flip(1)).sum(), params)
    want = torch.autograd.grad((a_ref * w + b_ref * w.flip(1)).sum(), params)
    for g, r_ in zip(got, want):
        torch.testing.assert_close(g, r_, **tol)


def test_normalisation_keeps_white_noise_variance():
    """With fixed gates, Var(h) = a^2 Var(h) + (1 - a^2) Var(i u)  =>  Var(h) = Var(i u)."""
    torch.manual_seed(0)
    layer = rnnzoo.create("hawk", d_model=8, d_rnn=64)
    with torch.no_grad():
        layer.gate_weight.zero_()
        layer.gate_bias[0] = 3.0   # r = sigma(3): a fixed gate per channel
        layer.gate_bias[1] = 20.0  # i = 1
        layer.a_logit.fill_(torch.logit(torch.tensor(0.99)).item())  # a_t = 0.99^(8 r) ~ 0.93
    u = torch.randn(4, 8000, 64)
    with torch.no_grad():
        a, b = layer.rg_lru_coefficients(u)
        from rnnzoo.ops.scan import linear_scan
        hs, _ = linear_scan(a, b)
    var = hs[:, 1000:].var(dim=(0, 1))
    assert (a[0, 0] > 0.85).all()  # memory long enough that the normalisation matters
    assert ((var - 1).abs() < 0.15).all()  # unnormalised it would be 1 / (1 - a_t^2) ~ 7
    assert 0.95 < var.mean() < 1.05
