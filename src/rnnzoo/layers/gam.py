"""Gated Associative Memory (GAM; Acharya 2025, "Gated Associative Memory: A Parallel O(N)
Architecture for Efficient Sequence Modeling", arXiv:2509.00605): the token mixer of the GAM
block, two pathways fused by per-channel gates.

    local_t  = sum_{k<d_conv} w_k * x_{t-d_conv+1+k} + b        (causal depthwise conv)
    global_t = softmax(M x_t) ^T M                               (M: (num_slots, d_model), a
                                                                  learned memory bank)
    g_l, g_g = sigmoid(W_g x_t)                                  (two d_model-wide gates)
    y_t      = W_o (g_l * local_t + g_g * global_t)

The global pathway is content-based retrieval from the bank, token by token, so nothing
but the convolution mixes time: O(N) in parallel, and its recurrent reading keeps only the
convolution's last d_conv - 1 inputs. (The block's LayerNorm, residual and feed-forward
are the model stack's.)

State: the conv state (B, d_conv - 1, d_model). Modes: `sequential` (token by token through
the conv state) and `parallel` (the whole sequence at once).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("gam", family="attention", paper="Acharya 2025, arXiv:2509.00605 (GAM)",
          tiny=dict(d_model=4, num_slots=3, d_conv=3))
class GAM(RecurrentLayer):
    """x: (B, T, d_model) -> y; state: the conv state (B, d_conv - 1, d_model)."""

    modes = ("sequential", "parallel")

    def __init__(self, d_model: int, num_slots: int = 256, d_conv: int = 4):
        super().__init__(d_model)
        self.num_slots = positive_int("num_slots", num_slots)
        self.conv = ShortConv(d_model, positive_int("d_conv", d_conv), bias=True, silu=False)
        self.memory = nn.Parameter(torch.randn(num_slots, d_model) * d_model ** -0.5)
        self.gate_proj = Linear(d_model, 2 * d_model)
        self.o_proj = Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return self.conv.init_state(batch_size, device, state_dtype(dtype))

    def retrieve(self, x):
        """global_t = softmax(M x_t)^T M: (..., d_model) -> (..., d_model)."""
        M = self.memory.to(x.dtype)
        return torch.softmax(x @ M.T, -1) @ M

    def _forward(self, x, state, mode):
        cdt = compute_dtype(x)
        xc = x.to(cdt)
        if mode == "sequential":
            locals_ = []
            for t in range(x.shape[1]):
                y_t, state = self.conv(xc[:, t:t + 1], state)
                locals_.append(y_t)
            local = torch.cat(locals_, 1)
        else:
            local, state = self.conv(xc, state)
        g_local, g_global = torch.sigmoid(self.gate_proj(x).to(cdt)).chunk(2, -1)
        fused = g_local * local + g_global * self.retrieve(xc)
        return self.o_proj(fused.to(x.dtype)), state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_slots={self.num_slots}, d_conv={self.conv.d_conv}"
