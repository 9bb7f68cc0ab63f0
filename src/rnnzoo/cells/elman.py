"""Elman RNN (Elman 1990, "Finding Structure in Time"), torch.nn.RNN's cell:

    h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  phi = tanh or relu

Parameters and initialisation as torch.nn.RNN: weight_ih (H, I), weight_hh (H, H),
bias_ih, bias_hh (H,), all U(-1/sqrt(H), 1/sqrt(H)). `fused` runs torch's RNN kernel.
"""

from __future__ import annotations

import torch

from rnnzoo.cells.base import cell
from rnnzoo.cells.parts import StackedGates, uniform_init_


class _Elman(StackedGates):
    nonlinearity = "tanh"
    has_torch_kernel = True

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        uniform_init_(self, hidden_size)

    def recur(self, xp_t, state):
        pre = xp_t + state[0] @ self.weight_hh.T
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)

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
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). State h (B, H)."""

    parallel_modes = ("newton", "quasi")


@cell("rnn_relu", paper="Elman 1990; ReLU as in Le et al. 2015, arXiv:1504.00941",
      tiny={"hidden_size": 6})
class ElmanReLU(_Elman):
    """h_t = relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). State h (B, H)."""

    nonlinearity = "relu"
