"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

    z_t = sigma(W_z x_t + b_z),  h~_t = W_h x_t + b_h
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

The gates depend on x_t only, so the recurrence is linear in h: the `scan`
mode solves it with `linear_scan(a = 1 - z, b = z * h~)`; `sequential` is the
loop. With `expand` > 1 the hidden width is expand * d_model and a linear map
takes h back to d_model.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("mingru", family="diagonal", paper="Feng et al. 2024, arXiv:2410.01201",
          tiny=dict(d_model=6, expand=2))
class MinGRU(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, expand * d_model)."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, expand: int = 1):
        super().__init__(d_model)
        self.hidden_size = positive_int("expand", expand) * d_model
        self.in_proj = Linear(d_model, 2 * self.hidden_size)
        self.out_proj = Linear(self.hidden_size, d_model) if expand != 1 else nn.Identity()

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=state_dtype(dtype))

    def _coefficients(self, x):
        """a = 1 - z and b = z * h~ in the compute dtype."""
        gate, cand = self.in_proj(x).to(compute_dtype(x)).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        return 1 - z, z * cand

    def _run(self, x, state, mode, mask=None):
        hs, h = diagonal_recurrence(*self._coefficients(x), state, mode, mask)
        return self.out_proj(hs.to(x.dtype)), h
