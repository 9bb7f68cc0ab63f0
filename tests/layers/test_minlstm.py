"""minLSTM (Feng et al. 2024): normalised gates and the closed form of the recurrence."""

import torch

import rnnzoo


def test_closed_form_with_constant_candidate():
    """With W_h = 0 the candidate is the bias c and h_t = P_t h_0 + (1 - P_t) c,
    P_t = prod_{j<=t} f'_j, f' = f / (f + i)."""
    torch.manual_seed(0)
    layer = rnnzoo.create("minlstm", d_model=4).double()
    d = layer.hidden_size
    c = torch.arange(1.0, d + 1, dtype=torch.float64)
    with torch.no_grad():
        layer.in_proj.weight[2 * d:].zero_()
        layer.in_proj.bias[2 * d:] = c
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    h0 = torch.randn(2, d, dtype=torch.float64)
    pre = x @ layer.in_proj.weight.T + layer.in_proj.bias
    f, i = torch.sigmoid(pre[..., :d]), torch.sigmoid(pre[..., d:2 * d])
    P = torch.cumprod(f / (f + i), dim=1)
    expected = P * h0.unsqueeze(1) + (1 - P) * c
    for mode in layer.modes:
        y, _ = layer(x, h0, mode=mode)
        assert (y - expected).abs().max() < 1e-12


def test_log_space_gates_survive_saturation():
    """sigma(-1000) underflows to 0 for both gates; f / (f + i) would be 0/0. In log space the
    normalised gates stay exact: f' = sigma(log f - log i) = 1/2 here."""
    layer = rnnzoo.create("minlstm", d_model=2)
    with torch.no_grad():
        layer.in_proj.weight.zero_()
        layer.in_proj.bias.fill_(-1000.0)
    f, i, _ = layer.gates(torch.zeros(1, 3, 2))
    assert torch.equal(f, torch.full_like(f, 0.5)) and torch.equal(f + i, torch.ones_like(f))
    y, h = layer(torch.randn(1, 5, 2))
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
