"""Hawk / RG-LRU (De et al. 2024): a_t = a^(c r_t) with c = 8, and the sqrt(1 - a_t^2)
normalisation that keeps the state's variance at the input's."""

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
