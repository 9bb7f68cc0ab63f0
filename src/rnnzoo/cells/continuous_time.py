"""Continuous-time cells: liquid time-constant (LTC) and closed-form continuous-time (CfC).

LTC (Hasani, Lechner, Amini, Rus & Grosu 2021, "Liquid Time-constant Networks",
AAAI, arXiv:2006.04439), eq. 1 solved with the paper's fused solver (eq. 3),
`ode_unfolds` implicit-explicit Euler steps of size dt / ode_unfolds per input:

    dx/dt = -[1/tau + f(x, I)] * x + f(x, I) * A,   f(x, I) = sigma(W_ih I + W_hh x + b)
    x <- (x + Delta * f * A) / (1 + Delta * (1/tau + f))

tau > 0 (tau = softplus(tau_raw)), A the per-neuron bias ("reversal potential").

CfC (Hasani, Lechner, Amini, Liebenwein, Ray, Tschaikowski, Teschl & Rus 2022,
"Closed-form continuous-time neural networks", Nature Machine Intelligence,
arXiv:2106.13898), eq. 10 with a shared backbone:

    u = lecun_tanh(W_ih I + W_hh x + b)                 (backbone; u = [I, x] without it)
    f, g, h = heads(u)                                  (three linear heads)
    x(t + dt) = sigma(-f * dt) * tanh(g) + (1 - sigma(-f * dt)) * tanh(h)

lecun_tanh(v) = 1.7159 tanh(0.666 v) and the tanh on g and h follow the authors'
reference implementation (ncps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, RecurrentMatrix, cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import affine, uniform_init_
from rnnzoo.ops.native.cells import NativeStep


@cell("ltc", paper="Hasani et al. 2021, arXiv:2006.04439",
      tiny={"hidden_size": 5, "ode_unfolds": 3})
class LTCCell(Cell):
    """Liquid time-constant cell, fused ODE solver. State x (B, H).

    Options: ode_unfolds (6, the paper's), dt (elapsed time per input, 1.0).
    Parameters: weight_ih (H, input_size), weight_hh (H, H), bias (H,), tau_raw (H,)
    (tau = softplus(tau_raw), starts at 1), reversal (A, (H,), U(-1, 1)).
    """

    def __init__(self, input_size, hidden_size, ode_unfolds=6, dt=1.0):
        super().__init__(input_size, hidden_size)
        self.ode_unfolds = checks.positive_int("ode_unfolds", ode_unfolds)
        self.dt = checks.positive("dt", dt)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        uniform_init_(self, hidden_size)
        self.tau_raw = nn.Parameter(torch.full((hidden_size,), math.log(math.e - 1)))
        self.reversal = nn.Parameter(torch.empty(hidden_size).uniform_(-1, 1))

    @property
    def tau(self) -> torch.Tensor:
        return nn.functional.softplus(self.tau_raw)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias)

    def weights(self, batch_size):
        """W_hh^T, 1 / tau."""
        return self.weight_hh.T, 1 / self.tau

    def transition(self, parts, state, w):
        (xp_t,), x, (w_hh, leak) = parts, state[0], w
        delta = self.dt / self.ode_unfolds
        for _ in range(self.ode_unfolds):
            f = torch.sigmoid(torch.addmm(xp_t, x, w_hh))
            x = (x + delta * f * self.reversal) / (1 + delta * (leak + f))
        return (x,)

    # -- the hand-written backward (`manual_loop`) -----------------------------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """W_hh once per unfold (each unfold's products their own g^T r; autograd sums the
        unfolds' gradients); A, 1 / tau."""
        return (self.weight_hh,) * self.ode_unfolds, (self.reversal, 1 / self.tau)

    def manual_native(self):
        """The same step in C (ops/native/ode_cells.c); the C loop takes at most 8 unfolds."""
        if self.ode_unfolds > 8:
            return None
        return NativeStep("ode_cells", "ltc", 3 * self.ode_unfolds * self.hidden_size,
                          (self.ode_unfolds,), floats=(self.dt / self.ode_unfolds,))

    def manual_step(self, xp_t, state, wt, vectors):
        x, (reversal, leak) = state[0], vectors
        delta = self.dt / self.ode_unfolds
        drive, base = delta * reversal, 1 + delta * leak
        inputs, saved = [], []
        for _ in range(self.ode_unfolds):
            inputs.append(x)
            f = torch.sigmoid(torch.addmm(xp_t, x, wt[0]))
            den = torch.add(base, f, alpha=delta)
            x = torch.addcmul(x, f, drive) / den
            saved.append((f, den, x))
        return (x,), None, tuple(inputs), saved

    def manual_back(self, d_state, saved, matrices, vectors):
        dx, reversal = d_state[0], vectors[0]
        delta = self.dt / self.ode_unfolds
        d_xp = d_reversal = d_leak = None
        gs = []
        for f, den, x in reversed(saved):
            d_num = dx / den
            d_den = -d_num * x
            d_a = sigmoid_back(torch.add(d_num * (delta * reversal), d_den, alpha=delta), f)
            dx = torch.addmm(d_num, d_a, matrices[0])
            gs.append(d_a)
            d_xp = d_a if d_xp is None else d_xp + d_a
            d_reversal = d_num * f if d_reversal is None else torch.addcmul(d_reversal, d_num, f)
            d_leak = d_den if d_leak is None else d_leak + d_den
        gs.reverse()
        return d_xp, (dx,), tuple(gs), (delta * d_reversal, delta * d_leak)


def lecun_tanh(v: torch.Tensor) -> torch.Tensor:
    return 1.7159 * torch.tanh(0.666 * v)


@cell("cfc", paper="Hasani et al. 2022, arXiv:2106.13898", tiny={"hidden_size": 5,
                                                               "backbone_units": 4})
class CfCCell(Cell):
    """Closed-form continuous-time cell. State x (B, H).

    Options: backbone_units (the backbone's width, default hidden_size; 0: no backbone),
    dt (elapsed time per input, 1.0). Parameters: weight_ih (U, input_size), weight_hh (U, H),
    bias (U,) of the backbone (U = 3H without it); weight_heads (3H, U), bias_heads (3H,)
    for f, g, h (absent without a backbone: the heads are then weight_ih/weight_hh).
    """

    def __init__(self, input_size, hidden_size, backbone_units=None, dt=1.0):
        super().__init__(input_size, hidden_size)
        if backbone_units is None:
            backbone_units = hidden_size
        self.backbone_units = checks.int_in("backbone_units", backbone_units, 0)
        self.dt = checks.positive("dt", dt)
        U = backbone_units or 3 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(U, input_size))
        self.weight_hh = nn.Parameter(torch.empty(U, hidden_size))
        self.bias = nn.Parameter(torch.empty(U))
        if backbone_units:
            self.weight_heads = nn.Parameter(torch.empty(3 * hidden_size, U))
            self.bias_heads = nn.Parameter(torch.empty(3 * hidden_size))
        uniform_init_(self, hidden_size)

    def project(self, x):
        return affine(x, self.weight_ih, self.bias)

    def weights(self, batch_size):
        """W_hh as a `RecurrentMatrix`, the heads' W^T (None without a backbone)."""
        return RecurrentMatrix(self.weight_hh), \
            self.weight_heads.T if self.backbone_units else None

    def fused(self, x, state):
        """The loop with its hand-written backward (`manual_loop`)."""
        return manual_loop(self, x, state)

    def manual_params(self):
        """W_hh (and the heads' W); the heads' bias."""
        if self.backbone_units:
            return (self.weight_hh, self.weight_heads), (self.bias_heads,)
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/ode_cells.c)."""
        H, U = self.hidden_size, self.backbone_units
        return NativeStep("ode_cells", "cfc", 3 * H + U, (int(U > 0),), floats=(self.dt,))

    def manual_step(self, xp_t, state, wt, vectors):
        x, H = state[0], self.hidden_size
        pre = torch.addmm(xp_t, x, wt[0])
        rs, back = (x,), None
        if self.backbone_units:
            back = torch.tanh(0.666 * pre)
            u = 1.7159 * back
            pre = torch.addmm(vectors[0], u, wt[1])
            rs = (x, u)
        gate = torch.sigmoid(pre[:, :H] * -self.dt)
        gh = torch.tanh(pre[:, H:])
        g, h = gh[:, :H], gh[:, H:]
        return (torch.addcmul(h, gate, g - h),), None, rs, (gate, gh, back)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dx,), (gate, gh, back), H = d_state, saved, self.hidden_size
        g, h = gh[:, :H], gh[:, H:]
        d_g = dx * gate
        d_f = sigmoid_back(dx * (g - h), gate) * -self.dt
        d_heads = torch.cat([d_f, tanh_back(torch.cat([d_g, dx - d_g], 1), gh)], 1)
        if not self.backbone_units:
            return d_heads, (d_heads @ matrices[0],), (d_heads,), ()
        d_pre = tanh_back((d_heads @ matrices[1]) * (1.7159 * 0.666), back)
        return d_pre, (d_pre @ matrices[0],), (d_pre, d_heads), (d_heads,)

    def transition(self, parts, state, w):
        (mm, heads) = w
        pre = mm(state[0], parts[0])
        if self.backbone_units:
            pre = torch.addmm(self.bias_heads, lecun_tanh(pre), heads)
        f, g, h = pre.chunk(3, -1)
        gate = torch.sigmoid(-f * self.dt)
        g, h = torch.tanh(g), torch.tanh(h)
        return (h + gate * (g - h),)
