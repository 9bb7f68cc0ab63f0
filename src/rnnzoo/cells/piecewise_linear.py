"""Piecewise-linear RNNs from dynamical-systems reconstruction: the PLRNN and the
almost-linear RNN (Brenner, Hemmer, Monfared & Durstewitz 2024, "Almost-Linear RNNs
Yield Highly Interpretable Symbolic Codes in Dynamical Systems Reconstruction",
NeurIPS, arXiv:2410.14240; the PLRNN after Durstewitz 2017 and Koppe et al. 2019):

    PLRNN:   z_t = A z_{t-1} + W relu(z_{t-1})  + C s_t + h
    AL-RNN:  z_t = A z_{t-1} + W Phi*(z_{t-1}) + C s_t + h,
             Phi*(z) = (z_1, ..., z_{M-P}, relu(z_{M-P+1}), ..., relu(z_M))

A (M,) is diagonal (the linear self-connections), W (M, M) the connections between units,
used off the diagonal only as in the papers (its diagonal is held at zero), C (M, N) the
input weights, h (M,) the bias; s_t the input, z_t the state and output (M = hidden_size).
Each sign pattern Omega of the ReLU units is one linear region, where the step is
z_t = (A + W D_Omega) z_{t-1} + C s_t + h (D_Omega = diag of the pattern): the PLRNN has
up to 2^M regions, the AL-RNN, with only the last P of its M units piecewise linear
(`num_relu`, P in the paper), 2^P. With no input, a region's fixed point is
z* = (I - A - W D_Omega)^{-1} h, a true fixed point when its own signs match Omega.

Initialisation (ours): A ~ U(0.5, 0.9), W ~ N(0, 1 / (4 M)) off the diagonal, C as
torch.nn.RNN's input weights, h zero. State: z (B, hidden_size).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.parts import add_bias, bias_param, uniform_init_


@cell("plrnn", paper="Durstewitz 2017; Brenner et al. 2024, NeurIPS, arXiv:2410.14240",
      tiny={"hidden_size": 5})
class PLRNN(Cell):
    """z_t = A z_{t-1} + W relu(z_{t-1}) + C s_t + h (see the module docstring).

    Parameters: A (M,), W (M, M) (off the diagonal), C (M, input_size), h (M,) (absent with
    bias=False). State: z (B, M)."""

    # dense Jacobian A + W D_Omega: Newton ends in a few steps (the map is piecewise linear);
    # quasi (its diagonal) measured divergent with W off the diagonal, so it is not offered
    parallel_modes = ("newton",)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        M = hidden_size
        self.A = nn.Parameter(torch.empty(M).uniform_(0.5, 0.9))
        self.W = nn.Parameter(torch.randn(M, M) / (2 * math.sqrt(M)))
        self.C = nn.Parameter(uniform_init_(torch.empty(M, input_size), M))
        self.h = bias_param(M, bias)
        self.register_buffer("off_diagonal", 1 - torch.eye(M), persistent=False)

    @property
    def num_linear(self) -> int:
        """M - P: the leading units that pass through no ReLU (none in the PLRNN)."""
        return 0

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Phi*(z): ReLU on the last P units, identity on the first M - P."""
        k = self.num_linear
        if k == 0:
            return torch.relu(z)
        return torch.cat([z[..., :k], torch.relu(z[..., k:])], -1)

    def project(self, x):
        return add_bias(x @ self.C.T, self.h)

    def weights(self, batch_size):
        W = self.W * self.off_diagonal.to(self.W.dtype)
        return W.T, self.A.expand(batch_size, -1)

    def transition(self, parts, state, w):
        z = state[0]
        return (torch.addmm(torch.addcmul(parts[0], w[1], z), self.phi(z), w[0]),)


@cell("al_rnn", paper="Brenner et al. 2024, NeurIPS, arXiv:2410.14240",
      tiny={"hidden_size": 5, "num_relu": 2})
class ALRNN(PLRNN):
    """z_t = A z_{t-1} + W Phi*(z_{t-1}) + C s_t + h, only the last `num_relu` (P) of the
    M units through a ReLU (default min(2, M)); 2^P linear regions. State: z (B, M)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 num_relu: int | None = None):
        super().__init__(input_size, hidden_size, bias)
        P = min(2, hidden_size) if num_relu is None else num_relu
        self.num_relu = checks.int_in("num_relu", P, 0, hidden_size)

    @property
    def num_linear(self) -> int:
        return self.hidden_size - self.num_relu

    def phi(self, z):
        if self.num_relu == 0:
            return z
        return super().phi(z)
