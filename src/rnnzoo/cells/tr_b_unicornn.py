"""UnICORNN, the undamped independent controlled oscillatory RNN (Rusch & Mishra
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

from rnnzoo.cells.base import cell
from rnnzoo.cells.tr_b_common import SplitCell, add_bias, bias_param, check_real


@cell("unicornn", paper="Rusch & Mishra 2021, arXiv:2103.05487")
class UnICORNN(SplitCell):
    """UnICORNN (see the module docstring). State: (y, z), each (B, H)."""

    jacobian_structure = ("block", 2)  # per channel: (y_j, z_j)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dt: float = 0.1, alpha: float = 0.0):
        super().__init__(input_size, hidden_size)
        self.dt = check_real("dt", dt, 0.0)
        self.alpha = check_real("alpha", alpha)
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
        return add_bias(x @ self.weight_ih.T, self.bias_ih)

    def pieces(self):
        return [self.hidden_size]

    def weights(self):
        """w and the per-unit step dt * sigmoid(c)."""
        return self.weight_hh, self.dt * torch.sigmoid(self.weight_ch)

    def transition(self, parts, state, w):
        (pre,), (y, z), (w_hh, step) = parts, state, w
        force = torch.add(torch.tanh(torch.addcmul(pre, w_hh, y)), y, alpha=self.alpha)
        z = torch.addcmul(z, step, force, value=-1.0)
        return torch.addcmul(y, step, z), z
