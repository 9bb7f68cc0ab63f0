"""UGRNN and the Intersection RNN (Collins, Sohl-Dickstein & Sussillo 2017,
"Capacity and Trainability in Recurrent Neural Networks", ICLR 2017,
arXiv:1611.09913, section 2 and appendix).

Layouts as torchrecurrent 0.2.5: `weight_ih` / `weight_hh` stack the gates'
maps in the order listed, `bias_ih` / `bias_hh` likewise. Initialisation is
torch.nn.RNN's U(-1/sqrt(hidden), 1/sqrt(hidden)).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_a_base import HoistedCell, linear, maybe_bias, uniform_

PAPER = "Collins, Sohl-Dickstein & Sussillo 2017, ICLR, arXiv:1611.09913"


@cell("ugrnn", paper=PAPER, tiny={"hidden_size": 5})
class UGRNN(HoistedCell):
    """Update-gate RNN: one gate between h_{t-1} and a tanh candidate.

        c_t = tanh(W_c x_t + U_c h_{t-1} + b_c)
        g_t = sigmoid(W_g x_t + U_g h_{t-1} + b_g)
        h_t = g_t * h_{t-1} + (1 - g_t) * c_t

    weight_ih = [W_c; W_g] (2H, I), weight_hh = [U_c; U_g] (2H, H). State: h.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(2 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(2 * H, H))
        self.bias_ih = maybe_bias(2 * H, bias)
        self.bias_hh = maybe_bias(2 * H, bias)
        for p in self.parameters():
            uniform_(p, H)

    def project(self, x):
        return linear(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def recurrent_weights(self, batch_size):
        return (self.weight_hh.T,)

    def recur_with(self, xp_parts, state, w):
        h = state[0]
        c, g = torch.addmm(xp_parts[0], h, w[0]).chunk(2, -1)
        return (torch.lerp(torch.tanh(c), h, torch.sigmoid(g)),)


@cell("intersection_rnn", paper=PAPER, tiny={"hidden_size": 5})
class IntersectionRNN(HoistedCell):
    """Intersection RNN: a highway-like output y_t beside the recurrent state h_t.

        d_t   = relu(W_d x_t + U_d h_{t-1} + b_d)            depth candidate
        r_t   = tanh(W_r x_t + U_r h_{t-1} + b_r)            recurrent candidate
        g^y_t = sigmoid(W_gy x_t + U_gy h_{t-1} + b_gy)
        g^h_t = sigmoid(W_gh x_t + U_gh h_{t-1} + b_gh)
        y_t   = g^y_t * x_t + (1 - g^y_t) * d_t
        h_t   = g^h_t * h_{t-1} + (1 - g^h_t) * r_t

    weight_ih = [W_d; W_r; W_gy; W_gh], weight_hh = [U_d; U_r; U_gy; U_gh]. y has
    the input's width (it gates x), h has hidden_size (the paper and torchrecurrent
    take them equal; rows of d and g^y number input_size, of r and g^h hidden_size).
    State: (y, h); y_t is the output and is not read by the next step.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        rows = 2 * (input_size + hidden_size)
        self.state_sizes = (input_size, hidden_size)
        self.xp_sizes = (rows, input_size)
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = maybe_bias(rows, bias)
        self.bias_hh = maybe_bias(rows, bias)
        for p in self.parameters():
            uniform_(p, hidden_size)

    def project(self, x):
        """(..., I) -> (..., 3I + 2H): the pre-activations' input part, then x itself."""
        return torch.cat([linear(x, self.weight_ih, self.bias_ih, self.bias_hh), x], -1)

    def recurrent_weights(self, batch_size):
        return (self.weight_hh.T,)

    def recur_with(self, xp_parts, state, w):
        h = state[1]
        pre, x = xp_parts
        n_in, n_h = self.input_size, self.hidden_size
        d, r, g_y, g_h = torch.addmm(pre, h, w[0]).split((n_in, n_h, n_in, n_h), -1)
        y = torch.lerp(torch.relu(d), x, torch.sigmoid(g_y))
        return y, torch.lerp(torch.tanh(r), h, torch.sigmoid(g_h))
