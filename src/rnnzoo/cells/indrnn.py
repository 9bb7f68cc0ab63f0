"""IndRNN (Li, Li, Cook, Zhu & Gao 2018, "Independently Recurrent Neural Network
(IndRNN): Building A Longer and Deeper RNN", CVPR 2018, arXiv:1803.04831):

    h_t = phi(W_ih x_t + b_ih + u * h_{t-1} + b_hh)

u (`weight_hh`, a vector) makes each neuron recur on itself only, so
d h_t / d h_{t-1} = diag(phi'(.) u) and gradients over T steps scale as u^T:
the paper keeps |u| <= (gamma)^(1/T) to control them. phi is ReLU in the
paper (the default); torchrecurrent 0.2.5 defaults to tanh and calls u
`vector_u`. Init: u ~ U(0, 1) as the paper's ReLU IndRNNs, W_ih torch.nn.RNN's.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.parts import activation, affine, bias_param, uniform_init_


@cell("indrnn", paper="Li, Li, Cook, Zhu & Gao 2018, CVPR, arXiv:1803.04831",
      tiny={"hidden_size": 5})
class IndRNN(Cell):
    """h_t = phi(W_ih x_t + b_ih + weight_hh * h_{t-1} + b_hh); weight_hh: (hidden_size,).

    Options: nonlinearity phi ("relu", the paper's, or "tanh"). State: h (B, hidden_size).
    """

    jacobian_structure = "diag"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "relu"):
        super().__init__(input_size, hidden_size)
        self.nonlinearity = nonlinearity
        self._phi = activation("nonlinearity", nonlinearity, ("relu", "tanh"))
        self.weight_ih = nn.Parameter(uniform_init_(torch.empty(hidden_size, input_size), hidden_size))
        self.weight_hh = nn.Parameter(torch.rand(hidden_size))
        self.bias_ih = bias_param(hidden_size, bias)
        self.bias_hh = bias_param(hidden_size, bias)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def weights(self, batch_size):
        return (self.weight_hh.expand(batch_size, -1),)

    def transition(self, parts, state, w):
        return (self._phi(torch.addcmul(parts[0], w[0], state[0])),)
