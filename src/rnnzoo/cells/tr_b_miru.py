"""Minion recurrent units MiRU1 and MiRU2 (Zyarah & Kudithipudi 2025, "Minion Gated
Recurrent Unit for Continual Learning", arXiv:2503.06175, Neurocomputing,
doi:10.1016/j.neucom.2026.132847): a GRU whose update gate is a fixed scaling
coefficient lambda (`update_coefficient`).

MiRU1 (a learned reset gate):

    r_t  = sigmoid(W_r x_t + b_r + U_r h_{t-1})
    h~_t = tanh(W_h x_t + b_h + U_h (r_t * h_{t-1}))
    h_t  = lambda h_{t-1} + (1 - lambda) h~_t

MiRU2 (the reset gate is a fixed scaling coefficient beta, `reset_coefficient`):

    h~_t = tanh(W_h x_t + b_h + U_h (beta h_{t-1}))
    h_t  = lambda h_{t-1} + (1 - lambda) h~_t

Parameters: weight_ih (k*H, I), weight_hh (k*H, H), bias_ih, bias_hh (k*H,), k = 2
(rows [r; h]) for MiRU1 and 1 for MiRU2. Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, check_real, glorot_init_

PAPER = "Zyarah & Kudithipudi 2025, arXiv:2503.06175"


class _MiRU(SplitCell):
    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 update_coefficient: float = 0.5):
        super().__init__(input_size, hidden_size)
        self.update_coefficient = check_real("update_coefficient", update_coefficient, 0.0, 1.0)
        k = self.gates
        self.weight_ih = nn.Parameter(torch.empty(k * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(k * hidden_size, hidden_size))
        self.bias_ih = bias_param(k * hidden_size, bias)
        self.bias_hh = bias_param(k * hidden_size, bias)
        glorot_init_(self)

    def project(self, x):
        # every bias enters linearly next to W x, so all of them fold in here
        return add_bias(x @ self.weight_ih.T, self.bias_ih, self.bias_hh)

    def pieces(self):
        return [self.gates * self.hidden_size]

    def weights(self):
        return self.weight_hh.T.split(self.hidden_size, 1)

    def _mix(self, h, candidate):
        lam = self.update_coefficient
        return torch.add(candidate * (1.0 - lam), h, alpha=lam)


@cell("miru1", paper=PAPER)
class MiRU1(_MiRU):
    """MiRU1: GRU with a fixed update coefficient lambda and a learned reset gate.
    See the module docstring. State: h (B, H)."""

    gates = 2

    def pieces(self):
        return [self.hidden_size, self.hidden_size]

    def transition(self, parts, state, w):
        (xr, xh), h, (u_r, u_h) = parts, state[0], w
        r = torch.sigmoid(torch.addmm(xr, h, u_r))
        candidate = torch.tanh(torch.addmm(xh, r * h, u_h))
        return (self._mix(h, candidate),)


@cell("miru2", paper=PAPER)
class MiRU2(_MiRU):
    """MiRU2: GRU with fixed update (lambda) and reset (beta) coefficients.
    See the module docstring. State: h (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 update_coefficient: float = 0.5, reset_coefficient: float = 0.5):
        super().__init__(input_size, hidden_size, bias, update_coefficient)
        self.reset_coefficient = check_real("reset_coefficient", reset_coefficient)

    def transition(self, parts, state, w):
        h = state[0]
        candidate = torch.tanh(torch.addmm(parts[0], h, w[0], alpha=self.reset_coefficient))
        return (self._mix(h, candidate),)
