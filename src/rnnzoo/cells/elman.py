"""Elman RNN (Elman 1990, "Finding Structure in Time"), torch.nn.RNN's cell:

    h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  phi = tanh or relu
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell


class _Elman(Cell):
    nonlinearity = "tanh"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size)) if bias else None
        bound = 1 / math.sqrt(hidden_size)  # torch.nn.RNN's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project(self, x):
        xp = x @ self.weight_ih.T
        return xp if self.bias_ih is None else xp + (self.bias_ih + self.bias_hh)

    def recur(self, xp_t, state):
        pre = xp_t + state[0] @ self.weight_hh.T
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)

    has_torch_kernel = True

    def flat_weights(self) -> list:
        """torch.nn.RNN's `_flat_weights` order for this layer: w_ih, w_hh[, b_ih, b_hh]."""
        w = [self.weight_ih, self.weight_hh]
        return w + ([self.bias_ih, self.bias_hh] if self.bias_ih is not None else [])

    def fused(self, x, state):
        fn = torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu
        out, h = fn(x, state[0].unsqueeze(0).to(x.dtype), self.flat_weights(),
                    self.bias_ih is not None, 1, 0.0, self.training, False, True)
        return out, (h[0],)


@cell("rnn_tanh", paper="Elman 1990, Cognitive Science 14(2)")
class ElmanTanh(_Elman):
    parallel_modes = ("newton", "quasi")
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""


@cell("rnn_relu", paper="Elman 1990; ReLU as in Le et al. 2015, arXiv:1504.00941",
      tiny={"hidden_size": 6})
class ElmanReLU(_Elman):
    """h_t = relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    nonlinearity = "relu"
