"""Recurrent Additive Network (Lee, Levy & Zettlemoyer 2017, "Recurrent Additive
Networks", arXiv:1705.07393): the content layer is a linear map of the input
alone, and the state is a gated sum of contents:

    c~_t = W_cx x_t
    i_t  = sigmoid(W_ih h_{t-1} + W_ix x_t + b_i)
    f_t  = sigmoid(W_fh h_{t-1} + W_fx x_t + b_f)
    c_t  = i_t * c~_t + f_t * c_{t-1}
    h_t  = g(c_t),   g = tanh (`nonlinearity="tanh"`) or the identity ("identity")

State (h, c). Parameters weight_ih (3H, I) rows [c~; i; f], weight_hh (2H, H) rows
[i; f], bias_ih, bias_hh (2H,). Glorot-uniform weights, zero biases. With g the
identity the gates still read h = c, so d c_t / d c_{t-1} is dense.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.parts import activation, add_bias, bias_param, glorot_init_


@cell("ran", paper="Lee, Levy & Zettlemoyer 2017, arXiv:1705.07393")
class RAN(Cell):
    """RAN (see the module docstring). State: (h, c), each (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        self.nonlinearity = nonlinearity
        self.g = activation("nonlinearity", nonlinearity, ("tanh", "identity"))
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(2 * H, H))
        self.bias_ih = bias_param(2 * H, bias)
        self.bias_hh = bias_param(2 * H, bias)
        glorot_init_(self)

    def project(self, x):
        H = self.hidden_size
        xp = x @ self.weight_ih.T
        return torch.cat([xp[..., :H], add_bias(xp[..., H:], self.bias_ih, self.bias_hh)], -1)

    def pieces(self):
        return (self.hidden_size, 2 * self.hidden_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        (content, gates_x), (h, c) = parts, state
        i, f = torch.sigmoid(torch.addmm(gates_x, h, w[0])).chunk(2, 1)
        c = torch.addcmul(f * c, i, content)
        return self.g(c), c
