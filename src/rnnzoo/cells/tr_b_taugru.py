"""tau-GRU, a GRU with weighted time-delay feedback (Erichson, Lim & Mahoney 2022,
"Gated Recurrent Neural Networks with Weighted Time-Delay Feedback",
arXiv:2212.00228). With delay d (steps):

    u_n = tanh(W_1 h_n + U_1 x_n + b_u)
    z_n = tanh(W_2 h_{n-d} + U_2 x_n + b_z)
    g_n = sigmoid(W_3 h_n + U_3 x_n + b_g)
    a_n = sigmoid(W_4 h_n + U_4 x_n + b_a)
    h_{n+1} = (1 - g_n) * h_n + g_n * (u_n + a_n * z_n)

States before the sequence's start are zero. The state is the delay line
(h_n, h_{n-1}, ..., h_{n-d}), d + 1 tensors of (B, H), so that a sequence split
in two continues exactly.

Parameters: weight_ih (4H, I), weight_hh (4H, H), bias_ih, bias_hh (4H,), rows in
the order [u; g; a; z] (the three maps of h_n first, so that they are one matrix
product). Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, glorot_init_


@cell("taugru", paper="Erichson, Lim & Mahoney 2022, arXiv:2212.00228", tiny={"delay": 2})
class TauGRU(SplitCell):
    """tau-GRU (see the module docstring). State: (h_n, h_{n-1}, ..., h_{n-d})."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, delay: int = 1):
        super().__init__(input_size, hidden_size)
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 1:
            raise ValueError(f"delay must be a positive int, got {delay!r}")
        self.delay = delay
        H = hidden_size
        self.state_sizes = (H,) * (delay + 1)
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih = bias_param(4 * H, bias)
        self.bias_hh = bias_param(4 * H, bias)
        glorot_init_(self)

    def project(self, x):
        return add_bias(x @ self.weight_ih.T, self.bias_ih, self.bias_hh)

    def pieces(self):
        return [3 * self.hidden_size, self.hidden_size]

    def weights(self):
        H = self.hidden_size
        return self.weight_hh.T.split([3 * H, H], 1)

    def transition(self, parts, state, w):
        (x_uga, x_z), (w_uga, w_z) = parts, w
        h, delayed = state[0], state[-1]
        u, g, a = torch.addmm(x_uga, h, w_uga).chunk(3, 1)
        u, g, a = torch.tanh(u), torch.sigmoid(g), torch.sigmoid(a)
        z = torch.tanh(torch.addmm(x_z, delayed, w_z))
        new = torch.addcmul(h, g, torch.addcmul(u, a, z) - h)
        return (new,) + tuple(state[:-1])
