"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

    f_t = sigma(W_f x_t),  i_t = sigma(W_i x_t),  h~_t = W_h x_t
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)        (time-independent scale)
    h_t = f'_t * h_{t-1} + i'_t * h~_t

The normalised gates sum to one, so h_t is a convex combination of h_{t-1} and
h~_t. They are computed in log space, f' = sigma(softplus(-i_pre) - softplus(-f_pre))
is exp(log f - logsumexp(log f, log i)), as in the paper's log-space version.
`scan` solves the recurrence with `linear_scan(a = f', b = i' h~)`. With `expand` > 1
the hidden width is expand * d_model and a linear map takes h back to d_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("minlstm", family="diagonal", paper="Feng et al. 2024, arXiv:2410.01201",
          tiny=dict(d_model=6, expand=2))
class MinLSTM(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, expand * d_model)."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, expand: int = 1):
        super().__init__(d_model)
        self.hidden_size = positive_int("expand", expand) * d_model
        self.in_proj = Linear(d_model, 3 * self.hidden_size)
        self.out_proj = Linear(self.hidden_size, d_model) if expand != 1 else nn.Identity()

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=state_dtype(dtype))

    def gates(self, x):
        """(f', i', h~) in the compute dtype; f' + i' = 1."""
        f, i, cand = self.in_proj(x).to(compute_dtype(x)).chunk(3, dim=-1)
        # log f - log i = log sigma(f) - log sigma(i) = softplus(-i) - softplus(-f)
        f_norm = torch.sigmoid(F.softplus(-i) - F.softplus(-f))
        return f_norm, 1 - f_norm, cand

    def _run(self, x, state, mode, mask=None):
        f, i, cand = self.gates(x)
        a, b = f, i * cand
        hs, h = diagonal_recurrence(a, b, state, mode, mask)
        return self.out_proj(hs.to(x.dtype)), h
