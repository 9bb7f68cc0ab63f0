"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences", arXiv:2303.06349).

    lambda = exp(-exp(nu) + i exp(theta))                      (d_state,) complex, |lambda| < 1
    h_t    = lambda * h_{t-1} + gamma * (B x_t)                 B: (d_state, d_model) complex
    y_t    = Re(C h_t) + D * x_t                                C: (d_model, d_state) complex

Ring initialisation: |lambda| uniform on the ring r_min <= |lambda| <= r_max (by area),
arg(lambda) uniform in [0, max_phase]. gamma = sqrt(1 - |lambda|^2) (learned, stored
as a log) normalises the state so that white-noise input gives unit state variance.
The state is complex: (B, d_state) complex64. `scan` runs `linear_scan` on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.registry import register


@register("lru", family="diagonal", paper="Orvieto et al. 2023, arXiv:2303.06349",
          tiny=dict(d_model=4, d_state=6))
class LRU(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, d_state) complex."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, d_state: int | None = None, r_min: float = 0.9,
                 r_max: float = 0.999, max_phase: float = 2 * math.pi):
        super().__init__(d_model)
        d_state = positive_int("d_state", d_model if d_state is None else d_state)
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if not 0 < max_phase <= 2 * math.pi:
            raise ValueError(f"max_phase must lie in (0, 2*pi], got {max_phase}")
        self.d_state, self.r_min, self.r_max, self.max_phase = d_state, r_min, r_max, max_phase
        u1, u2 = torch.rand(d_state), torch.rand(d_state)
        nu = -0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2)  # -log|lambda|
        self.nu_log = nn.Parameter(torch.log(nu.clamp(min=1e-12)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2.clamp(min=1e-6)))
        self.gamma_log = nn.Parameter(0.5 * torch.log(-torch.expm1(-2 * nu)))  # sqrt(1-|l|^2)
        self.B_re = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.B_im = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.C_re = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.C_im = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.randn(d_model))

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_state, device=device,
                           dtype=state_dtype(dtype, complex_=True))

    def eigenvalues(self, dtype=torch.float32) -> torch.Tensor:
        """lambda: (d_state,) complex."""
        nu, theta = self.nu_log.to(dtype).exp(), self.theta_log.to(dtype).exp()
        return torch.exp(torch.complex(-nu, theta))

    def _coefficients(self, x):
        """lambda (complex, compute dtype) and b_t = gamma * B x_t: (B, T, d_state) complex."""
        cdt = compute_dtype(x)
        gamma = self.gamma_log.to(cdt).exp()
        b = torch.complex(F.linear(x, self.B_re).to(cdt), F.linear(x, self.B_im).to(cdt))
        return self.eigenvalues(cdt), b * gamma

    def _readout(self, hs, x):
        """y = Re(C h) + D x = C_re h_re - C_im h_im + D x, in x's dtype."""
        return (F.linear(hs.real.to(x.dtype), self.C_re) - F.linear(hs.imag.to(x.dtype), self.C_im)
                + self.D * x)

    def _run(self, x, state, mode, mask=None):
        lam, b = self._coefficients(x)
        a = lam.view(1, 1, -1)
        hs, h = diagonal_recurrence(a, b, state, mode, mask)
        return self._readout(hs, x), h
