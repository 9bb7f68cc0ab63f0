"""Cells from time-discretised second-order ODEs (Rusch & Mishra): coRNN and LEM.

State (y, z), each (B, hidden_size); the output is y. Layouts as torchrecurrent
0.2.5 (weights copy across by name); maths as the papers.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_a_base import HoistedCell, check_positive, linear, maybe_bias, uniform_


@cell("cornn", paper="Rusch & Mishra 2021, ICLR, arXiv:2010.00951", tiny={"hidden_size": 5})
class CoRNN(HoistedCell):
    """Coupled oscillatory RNN (Rusch & Mishra 2021), an IMEX step of
    y'' = tanh(W y + W_z y' + V u + b) - gamma y - epsilon y':

        z_t = z_{t-1} + dt * (tanh(W_ih x_t + W_hh y_{t-1} + W_ch z_{t-1} + b)
                              - gamma * y_{t-1} - epsilon * z_t)
        y_t = y_{t-1} + dt * z_t

    the damping is implicit: z_t = (z_{t-1} + dt (tanh(.) - gamma y_{t-1})) / (1 + dt epsilon).
    `implicit_damping=False` uses epsilon * z_{t-1} instead, as the authors'
    released code and torchrecurrent do. b = b_ih + b_hh + b_ch. Defaults dt=0.042,
    gamma=2.7, epsilon=4.7 are the authors' sequential-MNIST settings; the init is
    theirs (one nn.Linear on [x, z, y]: U(+-1/sqrt(input + 2 hidden))).
    State: (y, z).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dt: float = 0.042, gamma: float = 2.7, epsilon: float = 4.7,
                 implicit_damping: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.dt = check_positive("dt", dt)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.epsilon = check_positive("epsilon", epsilon, allow_zero=True)
        if not isinstance(implicit_damping, bool):
            raise TypeError(f"implicit_damping must be a bool, got {implicit_damping!r}")
        self.implicit_damping = implicit_damping
        self.state_sizes = (H, H)
        self.weight_ih = nn.Parameter(torch.empty(H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.weight_ch = nn.Parameter(torch.empty(H, H))
        self.bias_ih, self.bias_hh, self.bias_ch = (maybe_bias(H, bias) for _ in range(3))
        for p in self.parameters():
            uniform_(p, input_size + 2 * H)

    def project(self, x):
        return linear(x, self.weight_ih, self.bias_ih, self.bias_hh, self.bias_ch)

    def recurrent_weights(self, batch_size):
        return self.weight_hh.T, self.weight_ch.T

    def recur_with(self, xp_parts, state, w):
        y, z = state
        dt = self.dt
        force = torch.tanh(torch.addmm(torch.addmm(xp_parts[0], y, w[0]), z, w[1]))
        if self.implicit_damping:
            z = torch.add(torch.add(z, y, alpha=-dt * self.gamma), force, alpha=dt) \
                / (1 + dt * self.epsilon)
        else:
            z = torch.add(z * (1 - dt * self.epsilon) - (dt * self.gamma) * y, force, alpha=dt)
        return torch.add(y, z, alpha=dt), z


@cell("lem", paper="Rusch, Mishra, Erichson & Mahoney 2022, ICLR, arXiv:2110.04744",
      tiny={"hidden_size": 5})
class LEM(HoistedCell):
    """Long expressive memory (Rusch et al. 2022), multiscale steps of two ODEs:

        dt_y = dt * sigmoid(W_1 y_{n-1} + V_1 u_n + b_1)
        dt_z = dt * sigmoid(W_2 y_{n-1} + V_2 u_n + b_2)
        z_n  = (1 - dt_z) * z_{n-1} + dt_z * tanh(W_z y_{n-1} + V_z u_n + b_z)
        y_n  = (1 - dt_y) * y_{n-1} + dt_y * tanh(W_y z_n + V_y u_n + b_y)

    y_n reads the new z_n (as the paper and the authors' code; torchrecurrent
    0.2.5 reads z_{n-1}), so a step needs two matrix products.
    weight_ih = [V_1; V_2; V_z; V_y] (4H, I), weight_hh = [W_1; W_2; W_z] (3H, H),
    weight_ch = W_y (H, H), biases likewise. Init as the authors' code:
    U(+-1/sqrt(hidden)) for every parameter. State: (y, z).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dt: float = 1.0):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.dt = check_positive("dt", dt)
        if self.dt > 1:
            raise ValueError(f"dt must lie in (0, 1] (dt_y, dt_z are interpolation weights), "
                             f"got {dt!r}")
        self.state_sizes = (H, H)
        self.xp_sizes = (3 * H, H)
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H))
        self.weight_ch = nn.Parameter(torch.empty(H, H))
        self.bias_ih = maybe_bias(4 * H, bias)
        self.bias_hh = maybe_bias(3 * H, bias)
        self.bias_ch = maybe_bias(H, bias)
        for p in self.parameters():
            uniform_(p, H)

    def project(self, x):
        xp = linear(x, self.weight_ih, self.bias_ih)
        return xp if self.bias_hh is None else xp + torch.cat([self.bias_hh, self.bias_ch])

    def recurrent_weights(self, batch_size):
        return self.weight_hh.T, self.weight_ch.T

    def recur_with(self, xp_parts, state, w):
        y, z = state
        x_yz, x_y = xp_parts
        H = self.hidden_size
        steps, z_pre = torch.addmm(x_yz, y, w[0]).split((2 * H, H), -1)
        steps = torch.sigmoid(steps) if self.dt == 1 else self.dt * torch.sigmoid(steps)
        dt_y, dt_z = steps.chunk(2, -1)
        z = torch.lerp(z, torch.tanh(z_pre), dt_z)
        return torch.lerp(y, torch.tanh(torch.addmm(x_y, z, w[1])), dt_y), z
