"""Recurrent Highway Network (Zilly, Srivastava, Koutnik & Schmidhuber 2017,
"Recurrent Highway Networks", ICML, arXiv:1607.03474), eqs. 6-9.

Each time step is `depth` highway micro-steps; only the first sees the input:

    s_0 = h_{t-1}
    for l = 1..L:
        hh_l = tanh(W_H x_t [l = 1] + R_H,l s_{l-1} + b_H,l)
        t_l  = sigma(W_T x_t [l = 1] + R_T,l s_{l-1} + b_T,l)
        c_l  = sigma(W_C x_t [l = 1] + R_C,l s_{l-1} + b_C,l)   (coupled: c_l = 1 - t_l)
        s_l  = hh_l * t_l + s_{l-1} * c_l
    h_t = s_L

Parameters: weight_ih (G*H, input_size), weight_hh (depth, G*H, H), bias (depth, G*H),
gate order (H, T[, C]); G = 2 with the coupled carry gate (the paper's experiments,
section 5), 3 without. Weights start as torch.nn.RNN's; the transform-gate bias
starts at -2, so each micro-step starts close to the identity (carry), as the
paper recommends for deep highway transitions.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.lstm import check_flag, fused_loop, uniform_init_


def check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@cell("rhn", paper="Zilly et al. 2017, arXiv:1607.03474", tiny={"hidden_size": 5, "depth": 2})
class RHNCell(Cell):
    """Recurrent highway cell of recurrence depth `depth` (default 3). State h (B, H)."""

    def __init__(self, input_size, hidden_size, depth=3, coupled=True):
        super().__init__(input_size, hidden_size)
        self.depth = check_positive_int("depth", depth)
        self.coupled = check_flag("coupled", coupled)
        G = (2 if coupled else 3) * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(depth, G, hidden_size))
        self.bias = nn.Parameter(torch.empty(depth, G))
        uniform_init_(self, hidden_size)
        with torch.no_grad():
            self.bias[:, hidden_size:2 * hidden_size] = -2.0

    def project(self, x):
        return x @ self.weight_ih.T

    def recur(self, xp_t, state):
        return self._step(xp_t, state, lambda k, s: s @ self.weight_hh[0].T)

    def fused(self, x, state):
        """The loop with the first micro-step's R gradient in one product (`fused_loop`)."""
        return fused_loop(self, x, state, [self.weight_hh[0]], [slice(None)], self._step)

    def _step(self, xp_t, state, mm):
        s = state[0]
        H = self.hidden_size
        for layer in range(self.depth):
            if layer == 0:
                pre = xp_t + mm(0, s) + self.bias[0]
            else:
                pre = s @ self.weight_hh[layer].T + self.bias[layer]
            hh, t = torch.tanh(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H])
            if self.coupled:
                s = s + t * (hh - s)  # hh * t + s * (1 - t)
            else:
                s = hh * t + s * torch.sigmoid(pre[:, 2 * H:])
        return (s,)
