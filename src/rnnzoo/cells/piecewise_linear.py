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


# -- generalized teacher forcing (Hess, Monfared, Brenner & Durstewitz 2023, "Generalized
# Teacher Forcing for Learning Chaotic Dynamics", ICML, arXiv:2306.04406) ------------------
#
# Dynamical-systems reconstruction reads the N observed variables off the first N latent
# units (the identity observation model) and runs the cell on no input (s_t = 0). During
# training the observed units are pulled towards the data before each step,
#
#     z~_t[:N] = alpha x_t + (1 - alpha) z_t[:N],   z~_t[N:] = z_t[N:],   z_{t+1} = F(z~_t),
#
# alpha = 1 being classic teacher forcing and alpha = 0 the free run. The loss is
# sum_t ||x_{t+1} - z_{t+1}[:N]||^2. With G the growth of the Jacobians along the
# trajectory, (1 - alpha) G <= 1 bounds the loss gradients: alpha* = max(0, 1 - 1/G), G the
# geometric mean of the spectral norms ||dz_{t+1}/dz~_t||. The annealing (every few updates)
# decays alpha by gamma, never below the current alpha*: alpha <- max(gamma alpha, alpha*).

def gtf_rollout(cell: PLRNN, x: torch.Tensor, alpha: float | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions (B, T - 1, N) of x_1 .. x_{T-1}, forced states z~ (B, T - 1, M)).

    x: (B, T, N) observations, N <= M; z_0 = (x_0, 0); alpha in [0, 1]."""
    B, T, N = x.shape
    M = cell.hidden_size
    if N > M:
        raise ValueError(f"observations ({N}) must fit in the latent state (hidden_size {M})")
    w = cell.weights(B)
    drive = cell.project(torch.zeros(B, cell.input_size, dtype=x.dtype, device=x.device))
    z = torch.cat([x[:, 0], x.new_zeros(B, M - N)], -1)
    preds, forced = [], []
    for t in range(T - 1):
        if t > 0:  # z_0 already holds x_0
            z = torch.cat([alpha * x[:, t] + (1 - alpha) * z[:, :N], z[:, N:]], -1)
        forced.append(z)
        z = cell.transition((drive,), (z,), w)[0]
        preds.append(z[:, :N])
    return torch.stack(preds, 1), torch.stack(forced, 1)


def free_run(cell: PLRNN, z0: torch.Tensor, steps: int) -> torch.Tensor:
    """The autonomous trajectory z_1 .. z_steps (B, steps, M) from z0 (B, M), no input."""
    B = z0.shape[0]
    w = cell.weights(B)
    drive = cell.project(torch.zeros(B, cell.input_size, dtype=z0.dtype, device=z0.device))
    out, z = [], z0
    for _ in range(steps):
        z = cell.transition((drive,), (z,), w)[0]
        out.append(z)
    return torch.stack(out, 1)


@torch.no_grad()
def gtf_alpha_bound(cell: PLRNN, forced: torch.Tensor) -> float:
    """alpha* = max(0, 1 - 1 / G), G the geometric mean of ||diag(A) + W D(z~)||_2 over the
    forced states z~ (..., M) (D: the derivative of Phi* there)."""
    z = forced.reshape(-1, cell.hidden_size)
    W = cell.W * cell.off_diagonal.to(cell.W.dtype)
    slope = torch.ones_like(z)
    slope[:, cell.num_linear:] = (z[:, cell.num_linear:] > 0).to(z.dtype)
    if isinstance(cell, ALRNN) and cell.num_relu == 0:
        slope = torch.ones_like(z)
    J = torch.diag_embed(cell.A.expand_as(z)) + W.unsqueeze(0) * slope.unsqueeze(1)
    G = torch.linalg.matrix_norm(J, ord=2).clamp_min(1e-12).log().mean().exp()
    return max(0.0, 1.0 - 1.0 / float(G))


def gtf_anneal(alpha: float, bound: float, gamma: float = 0.999) -> float:
    """The next alpha: max(gamma alpha, alpha*)."""
    return max(gamma * alpha, bound)
