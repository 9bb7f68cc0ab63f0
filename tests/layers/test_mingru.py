"""minGRU (Feng et al. 2024): the closed form of its recurrence."""

import torch

import rnnzoo


def test_mingru_closed_form_with_constant_candidate():
    """With W_h = 0 the candidate is the bias c, and h_t = (1 - prod_{j<=t} (1 - z_j)) c."""
    torch.manual_seed(0)
    layer = rnnzoo.create("mingru", d_model=4).double()
    d = layer.hidden_size
    with torch.no_grad():
        layer.in_proj.weight[d:].zero_()
        layer.in_proj.bias[d:] = torch.arange(1.0, d + 1)
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    z = torch.sigmoid(x @ layer.in_proj.weight[:d].T + layer.in_proj.bias[:d])
    expected = (1 - torch.cumprod(1 - z, dim=1)) * torch.arange(1.0, d + 1)
    for mode in layer.modes:
        y, h = layer(x, mode=mode)
        assert (y - expected).abs().max() < 1e-12
