"""Chimera: a 2-D state space over time x variates (Behrouz, Santacatterina & Zabih 2024,
"Chimera: Effectively Modeling Multivariate Time Series with 2-Dimensional State Space
Models", arXiv:2406.04320), in the Roesser form the paper builds on.

x (B, T, V, d_model): time along the grid's rows, variates along its columns. Each cell
(t, v) holds two diagonal states per channel, h1 carried along time and h2 along the
variates, each (d_model, d_state); with input-dependent steps (selective, as Mamba):

    D1, D2 = softplus(W_dt x + dt_bias)              (a time step and a variate step per channel)
    h1(t, v) = exp(D1 A1) h1(t-1, v) + exp(D1 A2) h2(t, v-1) + D1 B1(x) x
    h2(t, v) = exp(D2 A3) h1(t-1, v) + exp(D2 A4) h2(t, v-1) + D2 B2(x) x
    y(t, v)  = C1(x) . h1(t, v) + C2(x) . h2(t, v) + skip * x

A1..A4 = -exp(A_log) (d_model, d_state); B1, B2, C1, C2 linear in x (d_state each). This is
the grid recurrence of grid/dag.py with h1 on the downward edges and h2 on the rightward
ones, diagonal transitions. The cross terms A2, A3 start with fast decay (the number of
time-variate paths grows combinatorially; the paper's discretisation keeps each
transition below one, and so does exp(D A) with A < 0).

Modes: "sequential" (the loop over cells, the reference) and "wavefront" (the
anti-diagonals t + v in turn, every cell of one at once). State: (right, bottom): h2 leaving
the last variate (B, T, d_model, d_state) and h1 after the last time step (B, V, d_model,
d_state); an input state is (left, top) of the same shapes, so the series continues in time
with state (zeros, bottom).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.grid.base import GridLayer, register_grid
from rnnzoo.grid.dag import grid_dag
from rnnzoo.layers._softplus import inverse_softplus


@register_grid("chimera", paper="Behrouz et al. 2024, arXiv:2406.04320 (Chimera)",
               tiny=dict(d_model=4, d_state=2))
class Chimera(GridLayer):
    """x: (B, T, V, d_model) -> y; state (right (B, T, d_model, N), bottom (B, V, d_model, N))."""

    modes = ("sequential", "wavefront")

    def __init__(self, d_model: int, d_state: int = 8):
        super().__init__(d_model)
        N = self.d_state = positive_int("d_state", d_state)
        D = d_model
        self.dt_proj = nn.Linear(D, 2 * D)
        self.bc_proj = nn.Linear(D, 4 * N, bias=False)
        decay = torch.arange(1, N + 1, dtype=torch.float32).log().expand(4, D, N).clone()
        decay[1:3] += math.log(8.0)                     # the cross terms A2, A3 decay fast
        self.A_log = nn.Parameter(decay)
        self.skip = nn.Parameter(torch.ones(D))
        self.out = nn.Linear(D, D, bias=False)
        with torch.no_grad():
            dt = torch.empty(2 * D).uniform_(math.log(1e-2), math.log(1e-1)).exp()
            self.dt_proj.bias.copy_(inverse_softplus(dt))

    def auto_mode(self, x):
        return "wavefront"

    def init_state(self, batch_size, height, width, device=None, dtype=None):
        sd = state_dtype(dtype)
        return (torch.zeros(batch_size, height, self.d_model, self.d_state, device=device, dtype=sd),
                torch.zeros(batch_size, width, self.d_model, self.d_state, device=device, dtype=sd))

    def _forward(self, x, state, mode):
        B, X, Y, D = x.shape
        N = self.d_state
        cdt = compute_dtype(x)
        xc = x.to(cdt)
        d1, d2 = F.softplus(self.dt_proj(x).to(cdt)).view(B, X, Y, 2, D, 1).unbind(3)
        B1, B2, C1, C2 = self.bc_proj(x).to(cdt).view(B, X, Y, 4, 1, N).unbind(3)
        A = -torch.exp(self.A_log.to(cdt))                                  # (4, D, N)
        # T[..., out, in]: out 0 = right (h2), 1 = down (h1); in 0 = left (h2), 1 = up (h1)
        T = torch.stack([torch.stack([torch.exp(d2 * A[3]), torch.exp(d2 * A[2])], -3),
                         torch.stack([torch.exp(d1 * A[1]), torch.exp(d1 * A[0])], -3)], -4)
        u = xc[..., None]                                                   # (B, X, Y, D, 1)
        b = torch.stack([d2 * B2 * u, d1 * B1 * u], 3)                     # (B, X, Y, 2, D, N)
        L, U, right, bottom = grid_dag(T, b, state[0].to(cdt), state[1].to(cdt), mode)
        h2 = torch.cat([L[:, :, 1:], right[:, :, None]], 2)                # leaving each cell
        h1 = torch.cat([U[:, 1:], bottom[:, None]], 1)
        y = (C1 * h1).sum(-1) + (C2 * h2).sum(-1) + self.skip.to(cdt) * xc
        sd = state[0].dtype
        return self.out(y.to(x.dtype)), (right.to(sd), bottom.to(sd))


class VariateForecaster(nn.Module):
    """A 2-D layer over a multivariate series, shaped for the `forecast` task:
    inputs (B, T, C) -> outputs (B, T, horizon * C) (the task's layout, horizon-major).

    Each variate's value is lifted to d_model (a shared linear map plus an embedding per
    variate), the grid (B, T, C, d_model) goes through `layer` (a 2-D layer, e.g. Chimera)
    with a residual, and each cell is read out to the variate's `horizon` next values."""

    def __init__(self, layer: GridLayer, channels: int, horizon: int):
        super().__init__()
        d = layer.d_model
        self.channels = positive_int("channels", channels)
        self.horizon = positive_int("horizon", horizon)
        self.lift = nn.Linear(1, d)
        self.variate = nn.Parameter(torch.randn(channels, d) * 0.02)
        self.layer = layer
        self.head = nn.Linear(d, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"x must have shape (batch, time, channels={self.channels}), got "
                             f"shape {tuple(x.shape)}")
        h = self.lift(x[..., None]) + self.variate
        h = h + self.layer(h)[0]
        o = self.head(h)                                                 # (B, T, C, horizon)
        return o.transpose(2, 3).reshape(*x.shape[:2], self.horizon * self.channels)
