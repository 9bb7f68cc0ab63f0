"""Cells from time-discretised second-order ODEs (oscillators): coRNN, UnICORNN and LEM.

State (y, z), each (B, hidden_size); the output is y. coRNN and LEM keep the
layouts of torchrecurrent 0.2.5 (weights copy across by name); the maths is the
papers'.

UnICORNN, the undamped independent controlled oscillatory RNN (Rusch & Mishra
2021, "UnICORNN: A recurrent model for learning very long time dependencies",
ICML, arXiv:2103.05487): a symplectic-Euler discretisation of uncoupled
oscillators, each driven by the input,

    z_n = z_{n-1} - dt sigmoid(c) * [tanh(w * y_{n-1} + V u_n + b) + alpha y_{n-1}]
    y_n = y_{n-1} + dt sigmoid(c) * z_n

with w, c per-unit vectors: the recurrence is element-wise (no matrix on the
state), so d (y_n, z_n) / d (y_{n-1}, z_{n-1}) is diagonal per unit.

State (y, z), output y. Parameters: weight_ih (H, I) = V, bias_ih (H,) = b,
weight_hh (H,) = w, weight_ch (H,) = c. Initialisation as the paper's code:
V Kaiming-normal, w uniform in [0, 1], c uniform in [-0.1, 0.1], b zero.
Options dt (the time step) and alpha (the restoring force).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import affine, bias_param, uniform_init_
from rnnzoo.ops.native.cells import NativeStep


@cell("cornn", paper="Rusch & Mishra 2021, ICLR, arXiv:2010.00951", tiny={"hidden_size": 5})
class CoRNN(Cell):
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
        self.dt = checks.positive("dt", dt)
        self.gamma = checks.positive("gamma", gamma, allow_zero=True)
        self.epsilon = checks.positive("epsilon", epsilon, allow_zero=True)
        self.implicit_damping = checks.flag("implicit_damping", implicit_damping)
        self.state_sizes = (H, H)
        self.weight_ih = nn.Parameter(torch.empty(H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.weight_ch = nn.Parameter(torch.empty(H, H))
        self.bias_ih, self.bias_hh, self.bias_ch = (bias_param(H, bias) for _ in range(3))
        for p in self.parameters():
            uniform_init_(p, input_size + 2 * H)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh, self.bias_ch)

    def weights(self, batch_size):
        return self.weight_hh.T, self.weight_ch.T

    def transition(self, parts, state, w):
        y, z = state
        dt = self.dt
        force = torch.tanh(torch.addmm(torch.addmm(parts[0], y, w[0]), z, w[1]))
        if self.implicit_damping:
            z = torch.add(torch.add(z, y, alpha=-dt * self.gamma), force, alpha=dt) \
                / (1 + dt * self.epsilon)
        else:
            z = torch.add(z * (1 - dt * self.epsilon) - (dt * self.gamma) * y, force, alpha=dt)
        return torch.add(y, z, alpha=dt), z

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """The loop with its hand-written backward: z' = A z + B y + C f, y' = y + dt z'
        (`_coefficients`), f = tanh(a). With dz~ = dz_t + dt dy_t: d a = C dz~ (1 - f^2),
        dy_{t-1} = dy_t + B dz~ + d a W_hh, dz_{t-1} = A dz~ + d a W_ch."""
        return manual_loop(self, x, state)

    def _coefficients(self):
        """(A, B, C) of z' = A z + B y + C f."""
        dt, gamma, eps = self.dt, self.gamma, self.epsilon
        if self.implicit_damping:
            a = 1 / (1 + dt * eps)
            return a, -a * dt * gamma, a * dt
        return 1 - dt * eps, -dt * gamma, dt

    def manual_params(self):
        return (self.weight_hh, self.weight_ch), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "cornn", self.hidden_size,
                          floats=(self.dt, *self._coefficients()), g_is_dxp=True)

    def manual_step(self, xp_t, state, wt, vectors):
        y, z = state
        a, b, c = self._coefficients()
        f = torch.tanh(torch.addmm(torch.addmm(xp_t, y, wt[0]), z, wt[1]))
        z_new = torch.add(torch.add(a * z, y, alpha=b), f, alpha=c)
        return (torch.add(y, z_new, alpha=self.dt), z_new), None, (y, z), (f,)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dy, dz), (f,) = d_state, saved
        a, b, c = self._coefficients()
        dzt = torch.add(dz, dy, alpha=self.dt)
        da = tanh_back(c * dzt, f)
        return da, (torch.addmm(torch.add(dy, dzt, alpha=b), da, matrices[0]),
                    torch.addmm(a * dzt, da, matrices[1])), (da, da), ()


@cell("lem", paper="Rusch, Mishra, Erichson & Mahoney 2022, ICLR, arXiv:2110.04744",
      tiny={"hidden_size": 5})
class LEM(Cell):
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
        self.dt = checks.positive("dt", dt)
        if self.dt > 1:
            raise ValueError(f"dt must lie in (0, 1] (dt_y, dt_z are interpolation weights), "
                             f"got {dt!r}")
        self.state_sizes = (H, H)
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H))
        self.weight_ch = nn.Parameter(torch.empty(H, H))
        self.bias_ih = bias_param(4 * H, bias)
        self.bias_hh = bias_param(3 * H, bias)
        self.bias_ch = bias_param(H, bias)
        for p in self.parameters():
            uniform_init_(p, H)

    def project(self, x):
        xp = affine(x, self.weight_ih, self.bias_ih)
        return xp if self.bias_hh is None else xp + torch.cat([self.bias_hh, self.bias_ch])

    def pieces(self):
        return (3 * self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        return self.weight_hh.T, self.weight_ch.T

    def transition(self, parts, state, w):
        y, z = state
        x_yz, x_y = parts
        H = self.hidden_size
        steps, z_pre = torch.addmm(x_yz, y, w[0]).split((2 * H, H), -1)
        steps = torch.sigmoid(steps) if self.dt == 1 else self.dt * torch.sigmoid(steps)
        dt_y, dt_z = steps.chunk(2, -1)
        z = torch.lerp(z, torch.tanh(z_pre), dt_z)
        return torch.lerp(y, torch.tanh(torch.addmm(x_y, z, w[1])), dt_y), z

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh, self.weight_ch), ()

    def manual_native(self):
        """The same step in C (ops/native/ode_cells.c)."""
        return NativeStep("ode_cells", "lem", 6 * self.hidden_size, floats=(self.dt,))

    def manual_step(self, xp_t, state, wt, vectors):
        (y, z), H = state, self.hidden_size
        a = torch.addmm(xp_t[:, :3 * H], y, wt[0])
        sig = torch.sigmoid(a[:, :2 * H])
        steps = sig if self.dt == 1 else self.dt * sig
        t_z = torch.tanh(a[:, 2 * H:])
        z_new = torch.lerp(z, t_z, steps[:, H:])
        t_y = torch.tanh(torch.addmm(xp_t[:, 3 * H:], z_new, wt[1]))
        return (torch.lerp(y, t_y, steps[:, :H]), z_new), None, (y, z_new), \
            (y, z, sig, steps, t_z, t_y)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dy, dz), (y, z, sig, steps, t_z, t_y) = d_state, saved
        H = self.hidden_size
        dt_y, dt_z = steps[:, :H], steps[:, H:]
        d_ay = tanh_back(dy * dt_y, t_y)
        dz_new = torch.addmm(dz, d_ay, matrices[1])
        d_steps = torch.cat([dy * (t_y - y), dz_new * (t_z - z)], 1)
        if self.dt != 1:
            d_steps = d_steps * self.dt
        da = torch.cat([sigmoid_back(d_steps, sig), tanh_back(dz_new * dt_z, t_z)], 1)
        return torch.cat([da, d_ay], 1), \
            (torch.addmm(dy - dy * dt_y, da, matrices[0]), dz_new - dz_new * dt_z), (da, d_ay), ()



@cell("unicornn", paper="Rusch & Mishra 2021, arXiv:2103.05487")
class UnICORNN(Cell):
    """UnICORNN (see the module docstring). State: (y, z), each (B, H)."""

    jacobian_structure = ("block", 2)  # per channel: (y_j, z_j)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dt: float = 0.1, alpha: float = 0.0):
        super().__init__(input_size, hidden_size)
        self.dt = checks.real("dt", dt, 0.0)
        self.alpha = checks.real("alpha", alpha)
        H = hidden_size
        self.state_sizes = (H, H)
        self.weight_ih = nn.Parameter(torch.empty(H, input_size))
        self.bias_ih = bias_param(H, bias)
        self.weight_hh = nn.Parameter(torch.empty(H))
        self.weight_ch = nn.Parameter(torch.empty(H))
        nn.init.kaiming_normal_(self.weight_ih)
        nn.init.uniform_(self.weight_hh, 0.0, 1.0)
        nn.init.uniform_(self.weight_ch, -0.1, 0.1)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias_ih)

    def weights(self, batch_size):
        """w and the per-unit step dt * sigmoid(c)."""
        return self.weight_hh, self.dt * torch.sigmoid(self.weight_ch)

    def transition(self, parts, state, w):
        (pre,), (y, z), (w_hh, step) = parts, state, w
        force = torch.add(torch.tanh(torch.addcmul(pre, w_hh, y)), y, alpha=self.alpha)
        z = torch.addcmul(z, step, force, value=-1.0)
        return torch.addcmul(y, step, z), z
