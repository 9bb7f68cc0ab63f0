"""S5, the simplified state space layer (Smith, Warrington & Linderman 2023,
"Simplified State Space Layers for Sequence Modeling", arXiv:2208.04933).

One multi-input multi-output SSM over all d_model channels, diagonalised:

    Lambda_bar = exp(Lambda * dt),   B_bar = (Lambda_bar - 1) / Lambda * B      (ZOH, per state)
    h_t = Lambda_bar * h_{t-1} + B_bar u_t,   s_t = 2 Re(C h_t) + D * u_t      (h: d_state complex)
    y_t = g * sigmoid(W g),  g = gelu(s_t)

Lambda, B, C come from HiPPO-N (the normal part of HiPPO-LegS, -1/2 I plus a
skew-symmetric matrix) diagonalised by its eigenvectors V: B = V^H B_real,
C = C_real V, with a block-diagonal initialisation (`blocks` copies of a smaller
HiPPO-N). Only one of each conjugate pair of eigenvalues is kept, hence 2 Re(.).

`bidirectional=True` adds a backward SSM (same Lambda and B, its own C):
s_t = 2 Re(C h_t + C' g_t) + D u_t with g_t = Lambda_bar * g_{t+1} + B_bar u_t. That
layer is not causal: its output at t depends on the whole input, so it has no
`step`, and the state it takes and returns is the forward direction's (the
backward one starts from zero at the end of each call, or of each sequence
under `lengths`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def hippo_n(N: int) -> torch.Tensor:
    """The normal part of HiPPO-LegS, A + P P^T with P_n = sqrt(n + 1/2): (N, N) float64.

    Equals -1/2 I + S with S skew-symmetric: S_nk = -sqrt((n + 1/2)(k + 1/2)) below the
    diagonal, +sqrt(...) above it.
    """
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    pp = p.unsqueeze(1) * p.unsqueeze(0)
    return -0.5 * torch.eye(N, dtype=torch.float64) + torch.triu(pp, 1) - torch.tril(pp, -1)


def hippo_n_eig(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues with positive imaginary part of HiPPO-N (size N, even) and their
    eigenvectors: (N/2,) complex128 and (N, N/2) complex128 (orthonormal columns)."""
    S = hippo_n(N) + 0.5 * torch.eye(N, dtype=torch.float64)  # skew-symmetric part
    w, V = torch.linalg.eigh(-1j * S.to(torch.complex128))    # S = V diag(i w) V^H
    # the eigenvalues come in pairs +-w, none zero, in ascending order: the positive half is
    # the last N/2 (a slice, not a mask, so that the layer builds on the meta device too)
    w, V = w[N // 2:], V[:, N // 2:]
    return torch.complex(torch.full_like(w, -0.5), w), V


@register("s5", family="diagonal", paper="Smith et al. 2023, arXiv:2208.04933",
          tiny=dict(d_model=3, d_state=4, blocks=2))
class S5(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, d_state) complex."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, d_state: int = 64, blocks: int = 1,
                 bidirectional: bool = False, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__(d_model)
        for name, v in (("d_state", d_state), ("blocks", blocks)):
            positive_int(name, v)
        if d_state % blocks:
            raise ValueError(f"d_state={d_state} must be divisible by blocks, got {blocks}")
        flag("bidirectional", bidirectional)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.blocks, self.bidirectional = d_state, blocks, bidirectional
        lam, V = hippo_n_eig(2 * d_state // blocks)
        Lambda = lam.repeat(blocks)
        V = torch.block_diag(*[V] * blocks)                       # (2 d_state, d_state)
        self.log_neg_lambda_re = nn.Parameter(torch.log(-Lambda.real).float())
        self.lambda_im = nn.Parameter(Lambda.imag.float())
        B = torch.randn(2 * d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)
        self.B = nn.Parameter(torch.view_as_real(V.conj().T @ B.to(V.dtype)).float())
        n_c = 2 if bidirectional else 1
        C = torch.randn(n_c, d_model, 2 * d_state, dtype=torch.float64) / math.sqrt(2 * d_state)
        self.C = nn.Parameter(torch.view_as_real(C.to(V.dtype) @ V).float())  # (n_c, H, P, 2)
        self.D = nn.Parameter(torch.randn(d_model))
        self.log_dt = nn.Parameter(torch.rand(d_state) * (math.log(dt_max) - math.log(dt_min))
                                   + math.log(dt_min))
        self.gate = Linear(d_model, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_state, device=device,
                           dtype=state_dtype(dtype, complex_=True))

    def discretize(self, dtype=torch.float32):
        """(Lambda_bar (P,), B_bar (P, H)) complex, by zero-order hold with per-state dt."""
        Lambda = torch.complex(-self.log_neg_lambda_re.to(dtype).exp(), self.lambda_im.to(dtype))
        lam_bar = torch.exp(Lambda * self.log_dt.to(dtype).exp())
        B = torch.view_as_complex(self.B.to(dtype).contiguous())
        return lam_bar, ((lam_bar - 1) / Lambda).unsqueeze(-1) * B

    def ssm(self, x, state, mode, mask=None):
        """s = 2 Re(C h) (+ the backward direction) + D u: (B, T, d_model), and the final h."""
        cdt = compute_dtype(x)
        u = x.to(cdt)
        lam_bar, B_bar = self.discretize(cdt)
        b = torch.complex(F.linear(u, B_bar.real), F.linear(u, B_bar.imag))   # (B, T, P)
        a = lam_bar.view(1, 1, -1)
        C = torch.view_as_complex(self.C.to(cdt).contiguous())
        # padded steps are the identity in both directions
        hs, h = diagonal_recurrence(a, b, state, mode, mask)
        s = 2 * (hs @ C[0].T).real
        if self.bidirectional:
            gs, _ = diagonal_recurrence(a, b, torch.zeros_like(state), mode, mask, reverse=True)
            s = s + 2 * (gs @ C[1].T).real
        return s + self.D.to(cdt) * u, h

    def _run(self, x, state, mode, mask=None):
        # masked in both directions, so lengths are exact for the bidirectional layer too
        s, h = self.ssm(x, state, mode, mask)
        g = F.gelu(s).to(x.dtype)
        return g * torch.sigmoid(self.gate(g)), h

    def _step(self, x_t, state):
        if self.bidirectional:
            raise RuntimeError("step is undefined for a bidirectional S5: its output at t depends "
                               "on inputs after t; call the layer on the whole sequence, or build "
                               "it with bidirectional=False")
        return super()._step(x_t, state)
