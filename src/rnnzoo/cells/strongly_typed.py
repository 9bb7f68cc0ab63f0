"""Strongly-typed recurrent networks (Balduzzi & Ghifary 2016, "Strongly-Typed
Recurrent Neural Networks", ICML, arXiv:1602.02218). Every gate reads only
inputs (x_t, and x_{t-1} for T-GRU / T-LSTM), never the state, so the state
follows a diagonal *linear* recurrence c_t = f_t * c_{t-1} + b_t. These cells
therefore have a `fused` mode that computes every gate in one matrix product
and solves the recurrence for all steps at once with `ops.scan.linear_scan`.

T-RNN:   z_t = W_z x_t + b_z,  f_t = sigmoid(W_f x_t + b_f)
         h_t = f_t * h_{t-1} + (1 - f_t) * z_t
T-GRU:   [z_t, f_t, o_t] = W x_t + V x_{t-1} + b   (f through sigmoid, o through tanh)
         h_t = f_t * h_{t-1} + z_t * o_t
T-LSTM:  the same gates,  c_t = f_t * c_{t-1} + (1 - f_t) * z_t,  h_t = c_t * o_t

T-GRU and T-LSTM keep x_{t-1} in their state (zero before the first step), so
that a split sequence continues exactly: T-GRU (h, x_prev), T-LSTM (h, c, x_prev)
with h first, the output. Parameters: weight_ih (kH, I), bias_ih (kH,), and for
T-GRU/T-LSTM weight_hh (3H, I) = V and bias_hh (3H,); rows [z; f] or [z; f; o].
Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.parts import add_bias, affine, bias_param, glorot_init_
from rnnzoo.ops.scan import linear_scan

PAPER = "Balduzzi & Ghifary 2016, arXiv:1602.02218"


@cell("trnn", paper=PAPER)
class TRNN(Cell):
    """T-RNN (see the module docstring). State: h (B, H)."""

    jacobian_structure = "diag"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(2 * hidden_size, input_size))
        self.bias_ih = bias_param(2 * hidden_size, bias)
        glorot_init_(self)

    def project(self, x):
        """[a, b] with h_t = a_t * h_{t-1} + b_t: a = f, b = (1 - f) z."""
        z, f = affine(x, self.weight_ih, self.bias_ih).chunk(2, -1)
        f = torch.sigmoid(f)
        return torch.cat([f, z - f * z], -1)

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        return ()

    def transition(self, parts, state, w):
        a, b = parts
        return (torch.addcmul(b, a, state[0]),)

    def fused(self, x, state):
        a, b = self.project(x).chunk(2, -1)
        h, last = linear_scan(a, b, state[0])
        return h, (last,)


class _TypedWithPrevious(Cell):
    """Gates from x_t and x_{t-1}; x_{t-1} is the last entry of the state."""

    # d state_t / d state_{t-1} is diagonal in h (and c) but dense from x_{t-1} to h
    jacobian_structure = "dense"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, input_size))
        self.bias_ih = bias_param(3 * H, bias)
        self.bias_hh = bias_param(3 * H, bias)
        glorot_init_(self)

    def project(self, x):
        return torch.cat([affine(x, self.weight_ih, self.bias_ih, self.bias_hh), x], -1)

    def _gates(self, pre):
        """(f, z, o): forget gate, latent value, output (tanh) from the pre-activations."""
        z, f, o = pre.chunk(3, -1)
        return torch.sigmoid(f), z, torch.tanh(o)

    def pieces(self):
        return (3 * self.hidden_size, self.input_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def _step_gates(self, parts, x_prev, w):
        """Gates of one step and x_t (the next step's x_prev)."""
        gates_x, x_t = parts
        return self._gates(torch.addmm(gates_x, x_prev, w[0])), x_t

    def _all_gates(self, x, x_prev):
        shifted = torch.cat([x_prev.unsqueeze(1), x[:, :-1]], 1)
        pre = add_bias(affine(x, self.weight_ih) + shifted @ self.weight_hh.T,
                       self.bias_ih, self.bias_hh)
        return self._gates(pre)


@cell("tgru", paper=PAPER)
class TGRU(_TypedWithPrevious):
    """T-GRU (see the module docstring). State: (h (B, H), x_prev (B, I))."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, input_size)

    def transition(self, parts, state, w):
        h, x_prev = state
        (f, z, o), x_t = self._step_gates(parts, x_prev, w)
        return torch.addcmul(f * h, z, o), x_t

    def fused(self, x, state):
        h0, x_prev = state
        f, z, o = self._all_gates(x, x_prev)
        h, last = linear_scan(f, z * o, h0)
        return h, (last, x[:, -1])


@cell("tlstm", paper=PAPER)
class TLSTM(_TypedWithPrevious):
    """T-LSTM (see the module docstring). State: (h (B, H), c (B, H), x_prev (B, I))."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, hidden_size, input_size)

    def transition(self, parts, state, w):
        _, c, x_prev = state
        (f, z, o), x_t = self._step_gates(parts, x_prev, w)
        c = torch.addcmul(z, f, c - z)
        return c * o, c, x_t

    def fused(self, x, state):
        _, c0, x_prev = state
        f, z, o = self._all_gates(x, x_prev)
        c, last = linear_scan(f, z - f * z, c0)
        h = c * o
        return h, (h[:, -1], last, x[:, -1])
