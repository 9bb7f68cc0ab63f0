"""Paper facts for the foundation's two layers."""

import torch

import rnnzoo


def test_lstm_fused_and_sequential_equal_torch_lstm_float64():
    torch.manual_seed(0)
    layer = rnnzoo.create("lstm", d_model=5).double()
    peer = torch.nn.LSTM(5, 5, batch_first=True).double()
    peer.load_state_dict(layer.rnn.state_dict())
    x = torch.randn(3, 20, 5, dtype=torch.float64)
    h0, c0 = torch.randn(2, 3, 5, dtype=torch.float64)
    y_peer, (h, c) = peer(x, (h0[None], c0[None]))
    for mode in layer.modes:
        y, (h_, c_) = layer(x, (h0, c0), mode=mode)
        assert (y - y_peer).abs().max() < 1e-12
        assert (h_ - h[0]).abs().max() < 1e-12 and (c_ - c[0]).abs().max() < 1e-12


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
