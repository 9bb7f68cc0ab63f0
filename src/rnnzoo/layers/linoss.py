"""LinOSS, the linear oscillatory state-space model (Rusch & Rus 2025, "Oscillatory
State-Space Models", ICLR, arXiv:2410.03943).

d_state uncoupled forced harmonic oscillators, y'' = -A y + B u, read out as
x = C y + D u (A diagonal and non-negative, B: (d_state, d_model), C: (d_model, d_state)).
With the velocity z = y' and a learned step dt in (0, 1) per oscillator, the paper's two
discretisations of the first-order system are

    LinOSS-IM   (implicit):           z_n = z_{n-1} + dt (-A y_n     + B u_n)
                                      y_n = y_{n-1} + dt z_n
    LinOSS-IMEX (implicit-explicit):  z_n = z_{n-1} + dt (-A y_{n-1} + B u_n)
                                      y_n = y_{n-1} + dt z_n

each a 2x2 linear map per oscillator, (z_n, y_n) = M (z_{n-1} + dt B u_n, y_{n-1}).
Block (the paper's): s_n = C y_n + D u_n, out = GLU(W GELU(s)).

On the diagonal scan: the row vector (1, kappa) is a left eigenvector of M, so the
complex coordinate c = z + kappa y obeys c_n = lambda (c_{n-1} + dt B u_n) with

    IM:    kappa = i w,                                   lambda = (1 + i dt w) / (1 + dt^2 A)
    IMEX:  kappa = w (-dt w + i sqrt(4 - dt^2 A)) / 2,    lambda = 1 + dt kappa    (|lambda| = 1)

(w = sqrt(A)), one complex `linear_scan`; y = Im(c) / Im(kappa), z = Re(c) - Re(kappa) y.
|c|^2 is each scheme's oscillator energy: z^2 + A y^2 shrinks by 1 / (1 + dt^2 A) a step
under IM (the paper's dissipation), and z^2 - dt A y z + A y^2 is conserved under IMEX
(the map is symplectic, det M = 1). M is a Jordan block at A = 0 and IMEX is stable only
for dt^2 A <= 4 (the paper's condition), so A = clamp(A_hat, a_min, ...) keeps
1e-6 <= A (in place of the paper's ReLU) and, for IMEX, dt^2 A <= 3.99.
Initialisation as the paper: A_hat ~ U[0, 1]; dt = sigmoid(dt_hat). B and C are real as
in the paper's equations (the authors' code draws them complex and keeps Re(C y)).

State: (y, z), each (B, d_state), in the state dtype. Modes: `sequential` (the loop),
`scan` (`linear_scan`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register

A_MIN = 1e-6          # keeps M diagonalisable (a Jordan block at A = 0)
IMEX_MAX = 3.99       # dt^2 A below the IMEX stability bound 4


@register("linoss", family="diagonal", paper="Rusch & Rus 2025, ICLR, arXiv:2410.03943",
          tiny=dict(d_model=4, d_state=6))
class LinOSS(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (y, z), each (B, d_state).

    Options: d_state (m oscillators, default d_model), discretization ("IM" or "IMEX").
    """

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, d_state: int | None = None, discretization: str = "IM"):
        super().__init__(d_model)
        self.d_state = positive_int("d_state", d_model if d_state is None else d_state)
        self.discretization = choice("discretization", discretization, ("IM", "IMEX"))
        m = self.d_state
        self.A_hat = nn.Parameter(torch.rand(m))
        self.dt_hat = nn.Parameter(torch.randn(m))
        self.B = nn.Parameter(torch.empty(m, d_model).uniform_(-1, 1) / math.sqrt(d_model))
        self.C = nn.Parameter(torch.empty(d_model, m).uniform_(-1, 1) / math.sqrt(m))
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = Linear(d_model, 2 * d_model)  # followed by a GLU

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        return (torch.zeros(batch_size, self.d_state, device=device, dtype=sdt),
                torch.zeros(batch_size, self.d_state, device=device, dtype=sdt))

    def discretize(self, dtype=torch.float32):
        """(A, dt, kappa, lambda): A, dt (d_state,) real; kappa, lambda (d_state,) complex."""
        dt = torch.sigmoid(self.dt_hat.to(dtype))
        A = self.A_hat.to(dtype).clamp(min=A_MIN)
        if self.discretization == "IM":
            w = A.sqrt()
            kappa = torch.complex(torch.zeros_like(w), w)
            lam = torch.complex(torch.ones_like(w), dt * w) / (1 + dt * dt * A)
        else:
            A = torch.minimum(A, IMEX_MAX / (dt * dt))
            w = A.sqrt()
            kappa = torch.complex(-dt * A, w * (4 - dt * dt * A).sqrt()) / 2
            lam = 1 + dt * kappa
        return A, dt, kappa, lam

    def _run(self, x, state, mode, mask=None):
        cdt = compute_dtype(x)
        u = x.to(cdt)
        if mask is not None:  # padding never enters (NaN included)
            u = torch.where(mask, u, 0.0)
        _, dt, kappa, lam = self.discretize(cdt)
        y0, z0 = state
        c0 = z0 + kappa * y0
        b = lam * (dt * F.linear(u, self.B.to(cdt)))           # (B, T, d_state) complex
        cs, c = diagonal_recurrence(lam.view(1, 1, -1), b, c0, mode, mask)
        ys = cs.imag / kappa.imag
        s = F.linear(ys, self.C.to(cdt)) + self.D.to(cdt) * u
        out = F.glu(self.out_proj(F.gelu(s).to(x.dtype)), dim=-1)
        y = c.imag / kappa.imag
        return out, (y, c.real - kappa.real * y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, " \
               f"discretization={self.discretization!r}"
