"""Elman RNN (tanh, relu) against torch.nn.RNN."""

import pytest
import torch

import rnnzoo


@pytest.mark.parametrize("name,nonlinearity", [("rnn_tanh", "tanh"), ("rnn_relu", "relu")])
def test_elman_modes_equal_torch_rnn_float64(name, nonlinearity):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=5, hidden_size=4).double()
    peer = torch.nn.RNN(5, 4, nonlinearity=nonlinearity, batch_first=True).double()
    peer.load_state_dict({f"{k}_l0": v for k, v in layer.cell.state_dict().items()})
    x = torch.randn(3, 20, 5, dtype=torch.float64)
    h0 = torch.randn(3, 4, dtype=torch.float64)
    y_peer, h = peer(x, h0[None])
    for mode in layer.modes:
        y, h_ = layer(x, h0, mode=mode)
        assert (y - layer.out_proj(y_peer)).abs().max() < 1e-12
        assert (h_ - h[0]).abs().max() < 1e-12
