"""GSS, the Gated State Space layer (Mehta, Gupta, Cutkosky & Neyshabur 2022, "Long Range
Language Modeling via Gated State Spaces", arXiv:2206.13947).

A diagonal state space (DSS, zero-order hold with B = 1: the discretisation of layers/s4d.py)
run on a narrow projection of the input, gated by a wide one (the paper's figure 1, without
the block's norm and shortcut, which the model adds):

    v  = gelu(W_v x)            (B, T, F)        F = expand * d_model
    u  = gelu(W_u x)            (B, T, H)        H = d_ssm (d_model / 4 in the paper)
    y  = SSM(u)                 (B, T, H)        h_t = A_bar h_{t-1} + B_bar u_t,
                                                 y_t = 2 Re(C h_t) + D u_t per channel
    uc = W_uc y                 (B, T, F)
    o  = W_o (uc * v)           (B, T, d_model)

The SSM is an `S4D` (its `ssm`, not its GLU output block), so its modes are S4D's:
`sequential`, `scan` and `conv` (the FFT convolution with its Vandermonde kernel).
State: the SSM's h (B, d_ssm, d_state // 2) complex.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import positive_int
from rnnzoo.layers._diagonal import DiagonalLayer
from rnnzoo.layers.s4d import S4D
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("gss", family="diagonal", paper="Mehta et al. 2022, arXiv:2206.13947",
          tiny=dict(d_model=4, d_state=4, expand=2, d_ssm=2, chunk_size=4))
class GSS(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, d_ssm, d_state // 2) complex.

    Options: expand (F = expand * d_model, the gate's width), d_ssm (H, default
    max(1, d_model // 4)), d_state, init, dt_min, dt_max, chunk_size (the SSM's, as S4D)."""

    modes = ("sequential", "scan", "conv")

    def __init__(self, d_model: int, d_state: int = 64, expand: int = 4,
                 d_ssm: int | None = None, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 0.1, chunk_size: int = 128):
        super().__init__(d_model)
        self.expand = positive_int("expand", expand)
        self.d_ssm = positive_int("d_ssm", max(1, d_model // 4) if d_ssm is None else d_ssm)
        width = self.expand * d_model
        self.v_proj = Linear(d_model, width)
        self.u_proj = Linear(d_model, self.d_ssm)
        self.ssm = S4D(self.d_ssm, d_state=d_state, init=init, dt_min=dt_min, dt_max=dt_max,
                       chunk_size=chunk_size)
        del self.ssm.out_proj  # only S4D's SSM is used, not its GLU output block
        self.uc_proj = Linear(self.d_ssm, width)
        self.out_proj = Linear(width, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return self.ssm.init_state(batch_size, device=device, dtype=dtype)

    def _run(self, x, state, mode, mask=None):
        v = F.gelu(self.v_proj(x))
        u = F.gelu(self.u_proj(x))
        if mask is not None:  # padding never enters the SSM (NaN included)
            u = torch.where(mask, u, 0.0)
        y, h = self.ssm.ssm(u, state, mode, mask)
        o = self.out_proj(self.uc_proj(y.to(x.dtype)) * v)
        if mask is not None:
            o = torch.where(mask, o, 0.0)
        return o, h

    def auto_mode(self, x):
        return "conv"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, expand={self.expand}, d_ssm={self.d_ssm}"
