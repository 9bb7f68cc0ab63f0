"""HGRN, the hierarchically gated recurrent network (Qin, Yang & Zhong 2023,
arXiv:2311.04823), its token mixer (HGRU), real-valued as in the authors' and
flash-linear-attention's implementations:

    i_t = silu(W_i x_t),   g_t = W_g x_t
    lambda_t = gamma + (1 - gamma) * sigma(W_f x_t)           forget gate, >= gamma
    h_t = lambda_t * h_{t-1} + (1 - lambda_t) * i_t
    y_t = W_o LayerNorm(silu(g_t) * h_t)

The lower bound gamma depends on the layer: low layers may forget fast (short
range), high layers are pushed towards 1 (long range). In the paper the bounds
of all layers are a cumulative softmax of one learned vector, so they increase
with depth. Here each layer owns its bound, learnable within its band,

    gamma = (layer_idx + sigmoid(bound_logit)) / num_layers  in [layer_idx, layer_idx + 1) / num_layers,

which keeps the bounds monotone in depth; the stack sets `layer_idx` and
`num_layers`. A single layer (0 of 1) has a learnable bound in (0, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import int_in
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("hgrn", family="diagonal", paper="Qin et al. 2023, arXiv:2311.04823",
          tiny=dict(d_model=6, layer_idx=1, num_layers=3))
class HGRN(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, expand * d_model)."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, expand: int = 1, layer_idx: int = 0, num_layers: int = 1):
        super().__init__(d_model)
        for name, v, lo in (("expand", expand, 1), ("num_layers", num_layers, 1),
                            ("layer_idx", layer_idx, 0)):
            int_in(name, v, lo)
        if layer_idx >= num_layers:
            raise ValueError(f"layer_idx must be < num_layers={num_layers}, got {layer_idx}")
        self.layer_idx, self.num_layers = layer_idx, num_layers
        self.hidden_size = expand * d_model
        self.in_proj = Linear(d_model, 3 * self.hidden_size)  # i, f, g
        self.bound_logit = nn.Parameter(torch.zeros(self.hidden_size))
        self.norm = nn.LayerNorm(self.hidden_size)
        self.out_proj = Linear(self.hidden_size, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=state_dtype(dtype))

    def lower_bound(self, dtype=torch.float32) -> torch.Tensor:
        """gamma: (hidden_size,), in [layer_idx, layer_idx + 1) / num_layers."""
        return (self.layer_idx + torch.sigmoid(self.bound_logit.to(dtype))) / self.num_layers

    def gates(self, x):
        """(lambda, 1 - lambda, i, g): forget gate, input weight, input, output gate."""
        i, f, g = self.in_proj(x).chunk(3, dim=-1)
        cdt = compute_dtype(x)
        f, gamma = f.to(cdt), self.lower_bound(cdt)
        return gamma + (1 - gamma) * torch.sigmoid(f), (1 - gamma) * torch.sigmoid(-f), \
            F.silu(i).to(cdt), g

    def _run(self, x, state, mode, mask=None):
        lam, keep_in, i, g = self.gates(x)
        a, b = lam, keep_in * i
        hs, h = diagonal_recurrence(a, b, state, mode, mask)
        return self.out_proj(self.norm(F.silu(g) * hs.to(x.dtype))), h
