"""Cells with a structured recurrent matrix: expRNN and the Lipschitz RNN.

expRNN (Lezcano-Casado & Martinez-Rubio 2019, "Cheap Orthogonal Constraints in
Neural Networks", ICML, arXiv:1901.08428): the recurrent matrix is orthogonal by
construction, the matrix exponential of a skew-symmetric parameter,

    B = expm(A),  A = P - P^T  (P: the strictly upper triangle of weight_hh_log)
    h_t = modrelu(W x_t + b + B h_{t-1}),  modrelu(z) = sign(z) relu(|z| + b_mod)

A starts as Henaff et al.'s block-diagonal init: 2x2 blocks [[0, s], [-s, 0]],
s ~ U(-pi, pi) (the paper's section 4).

Lipschitz RNN (Erichson, Azencot, Queiruga, Hodgkinson & Mahoney 2021, "Lipschitz
Recurrent Neural Networks", ICLR, arXiv:2006.12070), eqs. 2-4 with the Euler step:

    A_b = (1 - beta)(M_A + M_A^T) + beta (M_A - M_A^T) - gamma_A I   (W_b likewise)
    h_t = h_{t-1} + eps * (A_b h_{t-1} + tanh(W_b h_{t-1} + U x_t + b))

Both build their recurrent matrix once per sequence (`weights`); each step is one
matrix product, and `fused` defers the matrix's gradient to one product (`fused_loop`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.cells.base import Cell, RecurrentMatrix, cell, fused_loop
from rnnzoo.cells.parts import affine, uniform_init_


class _DerivedRecurrentMatrix(Cell):
    """A cell whose step reads a matrix R derived from the parameters, built once per
    sequence (`weights`); `fused` defers R's gradient to one matrix product."""

    def recurrent_matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def weights(self, batch_size):
        return (RecurrentMatrix(self.recurrent_matrix()),)

    def fused(self, x, state):
        return fused_loop(self, x, state)


def modrelu(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sign(z) relu(|z| + b): Arjovsky et al. 2016's modReLU for real z."""
    return torch.sign(z) * torch.relu(z.abs() + b)


@cell("exprnn", paper="Lezcano-Casado & Martinez-Rubio 2019, arXiv:1901.08428",
      tiny={"hidden_size": 4})
class ExpRNNCell(_DerivedRecurrentMatrix):
    """Orthogonal RNN, B = matrix_exp(skew(weight_hh_log)). State h (B, H).

    Parameters: weight_ih (H, input_size), bias (H,), weight_hh_log (H, H) (only its strict
    upper triangle is used), bias_mod (H,) (modReLU's threshold, init U(-0.01, 0.01)).
    """

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        uniform_init_(self, hidden_size)
        self.weight_hh_log = nn.Parameter(torch.zeros(hidden_size, hidden_size))
        self.bias_mod = nn.Parameter(torch.empty(hidden_size).uniform_(-0.01, 0.01))
        with torch.no_grad():  # Henaff init: 2x2 rotation generators on the diagonal
            s = torch.empty(hidden_size // 2).uniform_(-math.pi, math.pi)
            idx = torch.arange(0, 2 * (hidden_size // 2), 2)
            self.weight_hh_log[idx, idx + 1] = s

    @property
    def weight_hh(self) -> torch.Tensor:
        """The orthogonal recurrent matrix B = expm(P - P^T), (H, H)."""
        return self.recurrent_matrix()

    def recurrent_matrix(self):
        P = self.weight_hh_log.triu(1)
        return torch.linalg.matrix_exp(P - P.T)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias)

    def transition(self, parts, state, w):
        return (modrelu(w[0](state[0], parts[0]), self.bias_mod),)


@cell("lipschitz_rnn", paper="Erichson et al. 2021, arXiv:2006.12070", tiny={"hidden_size": 5})
class LipschitzRNNCell(_DerivedRecurrentMatrix):
    """Lipschitz RNN, Euler discretisation. State h (B, H).

    Options: beta (0.75), gamma_a and gamma_w (0.001), eps (the step size, 0.03), the
    paper's defaults for its pixel-MNIST runs. Parameters: weight_ih (U), bias (b),
    weight_a (M_A), weight_w (M_W), M ~ N(0, 1/H) (the paper's init_std / sqrt(H)).
    """

    def __init__(self, input_size, hidden_size, beta=0.75, gamma_a=0.001, gamma_w=0.001,
                 eps=0.03):
        super().__init__(input_size, hidden_size)
        for arg, v, lo, hi in (("beta", beta, 0, 1), ("gamma_a", gamma_a, 0, math.inf),
                               ("gamma_w", gamma_w, 0, math.inf), ("eps", eps, 0, math.inf)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi \
                    or (arg == "eps" and v == 0):
                raise ValueError(f"{arg} must be a number in [{lo}, {hi}]"
                                 f"{' and > 0' if arg == 'eps' else ''}, got {v!r}")
        self.beta, self.gamma_a, self.gamma_w, self.eps = beta, gamma_a, gamma_w, eps
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        uniform_init_(self, hidden_size)
        std = 1 / math.sqrt(hidden_size)
        self.weight_a = nn.Parameter(torch.randn(hidden_size, hidden_size) * std)
        self.weight_w = nn.Parameter(torch.randn(hidden_size, hidden_size) * std)

    def _beta_matrix(self, M, gamma):
        eye = torch.eye(self.hidden_size, dtype=M.dtype, device=M.device)
        return (1 - self.beta) * (M + M.T) + self.beta * (M - M.T) - gamma * eye

    def recurrent_matrix(self):
        """[A_beta; W_beta] stacked: (2H, H), one matrix product gives both."""
        return torch.cat([self._beta_matrix(self.weight_a, self.gamma_a),
                          self._beta_matrix(self.weight_w, self.gamma_w)])

    def project(self, x):
        """(..., input_size) -> (..., 2H): [0, U x + b], so that one product with
        R = [A_beta; W_beta] adds the input to the W_beta half."""
        u = affine(x, self.weight_ih, self.bias)
        return torch.cat([torch.zeros_like(u), u], -1)

    def transition(self, parts, state, w):
        h = state[0]
        ah, wh = w[0](h, parts[0]).chunk(2, -1)
        return (h + self.eps * (ah + torch.tanh(wh)),)
