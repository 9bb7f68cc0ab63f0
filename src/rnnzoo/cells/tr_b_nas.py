"""NAS cell: the recurrent cell found by neural architecture search (Zoph & Le
2017, "Neural Architecture Search with Reinforcement Learning", arXiv:1611.01578),
as in TensorFlow's NASCell. Eight pre-activations from one matrix product,

    [g_0 .. g_7] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh

then a fixed tree of element-wise combinations:

    l_0 = sigmoid(g_0) * relu(g_1)      l_1 = sigmoid(g_2) + relu(g_3)
    l_2 = tanh(g_4) * sigmoid(g_5)      l_3 = tanh(g_6) + sigmoid(g_7)
    c_t = tanh(tanh(l_0) + c_{t-1}) * tanh(l_1)
    h_t = tanh(c_t * tanh(tanh(l_2) + sigmoid(l_3)))

State (h, c). Parameters weight_ih (8H, I), weight_hh (8H, H), bias_ih, bias_hh (8H,);
Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, glorot_init_


@cell("nas", paper="Zoph & Le 2017, arXiv:1611.01578")
class NAS(SplitCell):
    """NAS cell (see the module docstring). State: (h, c), each (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(8 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(8 * hidden_size, hidden_size))
        self.bias_ih = bias_param(8 * hidden_size, bias)
        self.bias_hh = bias_param(8 * hidden_size, bias)
        glorot_init_(self)

    def project(self, x):
        return add_bias(x @ self.weight_ih.T, self.bias_ih, self.bias_hh)

    def pieces(self):
        return [8 * self.hidden_size]

    def weights(self):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        h, c = state
        g = torch.addmm(parts[0], h, w[0]).chunk(8, 1)
        l0 = torch.sigmoid(g[0]) * torch.relu(g[1])
        l1 = torch.sigmoid(g[2]) + torch.relu(g[3])
        l2 = torch.tanh(g[4]) * torch.sigmoid(g[5])
        l3 = torch.tanh(g[6]) + torch.sigmoid(g[7])
        c = torch.tanh(torch.tanh(l0) + c) * torch.tanh(l1)
        h = torch.tanh(c * torch.tanh(torch.tanh(l2) + torch.sigmoid(l3)))
        return h, c
