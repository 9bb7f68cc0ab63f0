"""Mamba, the selective state-space block (S6) (Gu & Dao 2023, arXiv:2312.00752).

    x, z   = split(W_in x_t)                        (d_inner each, d_inner = expand * d_model)
    u      = silu(causal_depthwise_conv(x))         (width d_conv)
    dt, B, C = split(W_x u),  delta = softplus(W_dt dt + b_dt)      (dt_rank, d_state, d_state)
    h_t    = exp(delta_t A) * h_{t-1} + delta_t B_t u_t            A = -exp(A_log): (d_inner, d_state)
    y_t    = (C_t . h_t + D u_t) * silu(z_t),   out = W_out y_t

With `allow_neg_eigval` the transition becomes 2 exp(delta A) - 1, in (-1, 1)
instead of (0, 1) (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs
Through Negative Eigenvalues", arXiv:2411.12537): a channel can then flip the
sign of its state, which parity needs.

Modes: `sequential` is the loop over t; `scan` solves each time chunk with
`linear_scan` and checkpoints it (`chunk_size` steps), so that the
(B, T, d_inner, d_state) states never exist for the whole sequence at once.
The state is (conv_state (B, d_conv - 1, d_inner), ssm_state (B, d_inner, d_state)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.layers._chunks import over_chunks
from rnnzoo.layers._conv import causal_conv1d
from rnnzoo.layers.base import RecurrentLayer, compute_dtype, state_dtype, valid_mask
from rnnzoo.ops.scan import linear_scan
from rnnzoo.registry import register


def _positive_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def transition(delta: torch.Tensor, A: torch.Tensor, allow_neg_eigval: bool = False) -> torch.Tensor:
    """a = exp(delta A) in (0, 1], or 1 + 2 expm1(delta A) = 2 exp(delta A) - 1 in (-1, 1]."""
    dA = delta.unsqueeze(-1) * A
    return 1 + 2 * torch.expm1(dA) if allow_neg_eigval else torch.exp(dA)


def selective_scan(u, delta, A, B, C, D, h0=None, *, allow_neg_eigval=False, chunk_size=256,
                   mode="scan"):
    """The selective SSM of Mamba on already projected inputs.

    u, delta: (batch, T, d_inner); A: (d_inner, d_state); B, C: (batch, T, d_state);
    D: (d_inner,); h0: (batch, d_inner, d_state) or None.
    Returns y: (batch, T, d_inner) with y_t = C_t . h_t + D u_t, and h_{T-1}.
    mode: "scan" (chunked linear_scan) or "sequential" (the loop).
    """
    if h0 is None:
        h0 = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    if mode == "sequential":
        h, ys = h0, []  # unbind, not [:, t]: the backward of t-indexing is quadratic in T
        for u_t, delta_t, B_t, C_t in zip(*(t.unbind(1) for t in (u, delta, B, C))):
            h = transition(delta_t, A, allow_neg_eigval) * h + (delta_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)
            ys.append((h @ C_t.unsqueeze(-1)).squeeze(-1))
        return torch.stack(ys, 1) + D * u, h

    def chunk(h, u, delta, B, C):
        a = transition(delta, A, allow_neg_eigval)                     # (batch, L, d_inner, N)
        b = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
        hs, h = linear_scan(a, b, h)
        return (hs @ C.unsqueeze(-1)).squeeze(-1), h

    y, h = over_chunks(chunk, h0, (u, delta, B, C), chunk_size)
    return y + D * u, h


@register("mamba", family="diagonal", paper="Gu & Dao 2023, arXiv:2312.00752",
          tiny=dict(d_model=4, d_state=2, d_conv=3, expand=1, dt_rank=1, chunk_size=4))
class Mamba(RecurrentLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (conv_state, ssm_state)."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 allow_neg_eigval: bool = False, chunk_size: int = 256):
        super().__init__(d_model)
        self.d_state = _positive_int("d_state", d_state)
        self.d_conv = _positive_int("d_conv", d_conv)
        self.expand = _positive_int("expand", expand)
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        self.dt_rank = _positive_int("dt_rank ('auto' or)", dt_rank)
        if not isinstance(allow_neg_eigval, bool):
            raise TypeError(f"allow_neg_eigval must be a bool, got {allow_neg_eigval!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.allow_neg_eigval = allow_neg_eigval
        d_inner = self.d_inner = expand * d_model

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        bound = 1 / math.sqrt(d_conv)
        self.conv_weight = nn.Parameter(torch.empty(d_inner, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(d_inner).uniform_(-bound, bound))
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        with torch.no_grad():  # as mamba_simple.py: delta at init log-uniform in [dt_min, dt_max]
            self.dt_proj.weight.uniform_(-self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sd = state_dtype(dtype)
        return (torch.zeros(batch_size, self.d_conv - 1, self.d_inner, device=device, dtype=sd),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=sd))

    def ssm_inputs(self, x, conv_state, lengths=None):
        """(u, delta, A, B, C, z, new conv_state) of the selective scan, u..C in the compute dtype."""
        x_in, z = self.in_proj(x).chunk(2, dim=-1)
        x_conv, conv_state = causal_conv1d(x_in, self.conv_weight, self.conv_bias, conv_state,
                                           lengths)
        u = F.silu(x_conv)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        cdt = compute_dtype(x)
        A = -torch.exp(self.A_log.to(cdt))
        return u.to(cdt), delta.to(cdt), A, B.to(cdt), C.to(cdt), z, conv_state

    def _run(self, x, state, mode, lengths=None):
        conv_state, h0 = state
        u, delta, A, B, C, z, conv_state = self.ssm_inputs(x, conv_state, lengths)
        if lengths is not None:  # delta = 0 makes a padded step the identity: a = 1, b = 0
            delta = delta * valid_mask(lengths, x.shape[1]).unsqueeze(-1)
        y, h = selective_scan(u, delta, A, B, C, self.D.to(u.dtype), h0, mode=mode,
                              allow_neg_eigval=self.allow_neg_eigval, chunk_size=self.chunk_size)
        y = self.out_proj((y * F.silu(z.to(y.dtype))).to(x.dtype))
        if lengths is not None:
            y = y * valid_mask(lengths, x.shape[1]).unsqueeze(-1).to(y.dtype)
        return y, (conv_state, h)

    def _forward(self, x, state, mode):
        return self._run(x, state, mode)

    def _forward_lengths(self, x, state, mode, lengths):
        return self._run(x, state, mode, lengths)

    def _step(self, x_t, state):
        y, state = self._run(x_t.unsqueeze(1), state, "sequential")
        return y[:, 0], state
