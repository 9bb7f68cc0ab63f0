"""AntisymmetricRNN and its gated form (Chang, Chen, Haber & Chi 2019,
"AntisymmetricRNN: A Dynamical System View on Recurrent Neural Networks",
ICLR 2019, arXiv:1902.09689).

Forward Euler steps of the ODE h' = tanh((W - W^T) h + V x + b), whose
Jacobian has purely imaginary eigenvalues (neither exploding nor vanishing);
the diffusion gamma moves them slightly to the left:

    A   = W_hh - W_hh^T - gamma I
    h_t = h_{t-1} + epsilon * tanh(W_ih x_t + b_ih + A h_{t-1} + b_hh)

gated, the gate and the candidate share A:

    z_t = sigmoid(W_ih^z x_t + b_ih^z + A h_{t-1})
    h_t = h_{t-1} + epsilon * z_t * tanh(W_ih^h x_t + b_ih^h + A h_{t-1} + b_hh)

Initialisation as the paper's appendix C: W_ih ~ N(0, 1/input_size), W_hh ~
N(0, sigma_w^2 / hidden_size), biases 0. Defaults: epsilon = 0.1 (from the
paper's grid {0.01, 0.1, 1}) and a small diffusion gamma = 0.01.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import activation, affine, bias_param
from rnnzoo.ops.native.cells import NativeStep

PAPER = "Chang, Chen, Haber & Chi 2019, arXiv:1902.09689"


class _Antisymmetric(Cell):
    gates = 1  # rows of W_ih per hidden unit

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 epsilon: float = 0.1, gamma: float = 0.01, sigma_w: float = 1.0):
        super().__init__(input_size, hidden_size)
        self.epsilon = checks.positive("epsilon", epsilon)
        self.gamma = checks.positive("gamma", gamma, allow_zero=True)
        self.weight_ih = nn.Parameter(torch.empty(self.gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = bias_param(self.gates * hidden_size, bias)
        self.bias_hh = bias_param(hidden_size, bias)
        nn.init.normal_(self.weight_ih, std=1 / math.sqrt(input_size))
        nn.init.normal_(self.weight_hh, std=checks.positive("sigma_w", sigma_w, allow_zero=True)
                        / math.sqrt(hidden_size))

    def weights(self, batch_size):
        """A^T = W^T - W - gamma I, laid out for h @ A^T."""
        w = self.weight_hh
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return (w.T - w - self.gamma * eye,)


@cell("antisymmetric_rnn", paper=PAPER, tiny={"hidden_size": 5})
class AntisymmetricRNN(_Antisymmetric):
    """h_t = h_{t-1} + epsilon * phi(W_ih x_t + b_ih + (W_hh - W_hh^T - gamma I) h_{t-1} + b_hh).

    Options: epsilon (step size), gamma (diffusion), sigma_w (std of W_hh times
    sqrt(hidden_size)), nonlinearity phi ("tanh", "relu" or "identity").
    State: h (B, hidden_size).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 epsilon: float = 0.1, gamma: float = 0.01, sigma_w: float = 1.0,
                 nonlinearity: str = "tanh"):
        super().__init__(input_size, hidden_size, bias, epsilon, gamma, sigma_w)
        self.nonlinearity = nonlinearity
        self._phi = activation("nonlinearity", nonlinearity, ("tanh", "relu", "identity"))

    def project(self, x):
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def transition(self, parts, state, w):
        h = state[0]
        return (torch.add(h, self._phi(torch.addmm(parts[0], h, w[0])), alpha=self.epsilon),)


@cell("gated_antisymmetric_rnn", paper=PAPER, tiny={"hidden_size": 5})
class GatedAntisymmetricRNN(_Antisymmetric):
    """z_t = sigmoid(W_ih^z x_t + b_ih^z + A h_{t-1}),
    h_t = h_{t-1} + epsilon * z_t * tanh(W_ih^h x_t + b_ih^h + A h_{t-1} + b_hh),
    A = W_hh - W_hh^T - gamma I.

    weight_ih (2*hidden, input) stacks [W_ih^z; W_ih^h] (bias_ih likewise);
    bias_hh (hidden) is the candidate's. State: h (B, hidden_size).
    """

    gates = 2

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        if self.bias_hh is not None:
            xp = torch.cat([xp[..., :H], xp[..., H:] + self.bias_hh], -1)
        return xp

    def weights(self, batch_size):
        """[A^T, A^T] (H, 2H): the gate and the candidate in one product."""
        a_t = super().weights(batch_size)[0]
        return (torch.cat([a_t, a_t], 1),)

    def transition(self, parts, state, w):
        h = state[0]
        z, c = torch.addmm(parts[0], h, w[0]).chunk(2, -1)
        return (torch.addcmul(h, torch.sigmoid(z), torch.tanh(c), value=self.epsilon),)

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """The loop with its hand-written backward; the step multiplies h by A once (the
        reference by [A; A]): q = h A^T, z = sigmoid(xp_z + q), u = tanh(xp_h + q),
        h' = h + epsilon z u. With d = dh_t epsilon: d a_z = d u z (1 - z),
        d a_u = d z (1 - u^2), dh_{t-1} = dh_t + (d a_z + d a_u) A."""
        return manual_loop(self, x, state)

    def manual_params(self):
        """A = W_hh - W_hh^T - gamma I."""
        return (_Antisymmetric.weights(self, 1)[0].T,), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "gasym", 2 * self.hidden_size, floats=(self.epsilon,))

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        q = h @ wt[0]
        z, u = torch.sigmoid(xp_t[:, :H] + q), torch.tanh(xp_t[:, H:] + q)
        return (torch.addcmul(h, z, u, value=self.epsilon),), None, (h,), (z, u)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (z, u) = d_state, saved
        d = dh * self.epsilon
        d_z, d_u = sigmoid_back(d * u, z), tanh_back(d * z, u)
        g = d_z + d_u
        return torch.cat([d_z, d_u], 1), (torch.addmm(dh, g, matrices[0]),), (g,), ()
