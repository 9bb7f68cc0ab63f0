"""Two single-gate cells whose new state squashes a gated mix of the old state
and an input-only candidate.

STAR, the stackable recurrent cell (Turkoglu et al. 2021, "Gating Revisited: Deep
Multi-layer RNNs That Can Be Trained", arXiv:1911.11033, TPAMI):

    z_t = tanh(W_z x_t + b_z)
    k_t = sigmoid(W_x x_t + W_h h_{t-1} + b_k)
    h_t = tanh((1 - k_t) * h_{t-1} + k_t * z_t)

  weight_ih (2H, I) rows [z; k], bias_ih (2H,), weight_hh (H, H), bias_hh (H,).

SGRN, the simple gated recurrent network (IET Generation, Transmission &
Distribution 2021, doi:10.1049/gtd2.12056): one shared input map u_t,

    u_t = W_ih x_t + b_ih
    f_t = sigmoid(u_t + W_hh h_{t-1} + b_hh),   i_t = 1 - f_t
    h_t = tanh(i_t * u_t + f_t * h_{t-1})

  weight_ih (H, I), weight_hh (H, H), bias_ih, bias_hh (H,).

Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, glorot_init_


class _SingleGate(SplitCell):
    input_rows = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(self.input_rows * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.bias_ih = bias_param(self.input_rows * H, bias)
        self.bias_hh = bias_param(H, bias)
        glorot_init_(self)

    def pieces(self):
        return [self.hidden_size, self.hidden_size]

    def weights(self):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        """parts = (candidate, gate pre-activation from x): h = tanh(h + k (candidate - h))."""
        (candidate, gate_x), h = parts, state[0]
        k = torch.sigmoid(torch.addmm(gate_x, h, w[0]))
        return (torch.tanh(torch.addcmul(h, k, candidate - h)),)


@cell("star", paper="Turkoglu et al. 2021, arXiv:1911.11033")
class STAR(_SingleGate):
    """STAR (see the module docstring). State: h (B, H)."""

    input_rows = 2

    def project(self, x):
        H = self.hidden_size
        xp = add_bias(x @ self.weight_ih.T, self.bias_ih)
        return torch.cat([torch.tanh(xp[..., :H]), add_bias(xp[..., H:], self.bias_hh)], -1)


@cell("sgrn", paper="IET Gener. Transm. Distrib. 2021, doi:10.1049/gtd2.12056")
class SGRN(_SingleGate):
    """SGRN (see the module docstring); i_t = 1 - f_t, so h = tanh(h + (1 - f)(u - h)).
    State: h (B, H)."""

    def project(self, x):
        u = add_bias(x @ self.weight_ih.T, self.bias_ih)
        return torch.cat([u, add_bias(u, self.bias_hh)], -1)

    def transition(self, parts, state, w):
        (u, gate_x), h = parts, state[0]
        f = torch.sigmoid(torch.addmm(gate_x, h, w[0]))
        return (torch.tanh(torch.addcmul(u, f, h - u)),)
