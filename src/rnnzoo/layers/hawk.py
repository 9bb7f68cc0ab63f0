"""Hawk: Griffin's recurrent block with the Real-Gated Linear Recurrent Unit
(De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention
for Efficient Language Models", arXiv:2402.19427).

Recurrent block (width d_rnn, 4/3 d_model by default):

    gate = gelu(W_g x_t),   u = causal_depthwise_conv(W_u x_t)       (temporal conv, width d_conv)
    y_t = W_o (gate * RG-LRU(u)_t)

RG-LRU, with a = sigma(Lambda) per channel and the paper's constant c = 8 (`gate_scale`):

    r_t = sigma(W_a u_t + b_a),   i_t = sigma(W_x u_t + b_x)         (block-diagonal W, num_heads)
    log a_t = -c * softplus(-Lambda) * r_t                            (a_t = a^(c r_t), in log space)
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)

Lambda is initialised so that a^c is uniform in [0.9, 0.999]. The state is
(conv_state (B, d_conv - 1, d_rnn), h (B, d_rnn)).

Two options follow RecurrentGemma's released code (Botev et al. 2024, arXiv:2404.07839):
`gate_act="gelu_tanh"` (GELU's tanh approximation on the gate branch) and
`normalize_first=False`: the first step of a sequence (the state is init_state's) takes
i_t * u_t without the sqrt(1 - a_t^2) factor, as the reference resets at position 0.
The state then carries a third entry, started (B,): 1 once a sequence has had a step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import choice, flag, positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._diagonal import DiagonalLayer, diagonal_recurrence
from rnnzoo.layers.conv import ShortConv
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


@register("hawk", family="diagonal", paper="De et al. 2024, arXiv:2402.19427",
          tiny=dict(d_model=4, d_rnn=6, num_heads=2, d_conv=3))
class Hawk(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (conv_state, h)."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, d_rnn: int | None = None, num_heads: int = 1,
                 d_conv: int = 4, gate_scale: float = 8.0, gate_act: str = "gelu",
                 normalize_first: bool = True):
        super().__init__(d_model)
        self.gate_act = choice("gate_act", gate_act, ("gelu", "gelu_tanh"))
        self.normalize_first = flag("normalize_first", normalize_first)
        d_rnn = (4 * d_model + 2) // 3 if d_rnn is None else d_rnn
        for name, v in (("d_rnn", d_rnn), ("num_heads", num_heads), ("d_conv", d_conv)):
            positive_int(name, v)
        if d_rnn % num_heads:
            raise ValueError(f"d_rnn={d_rnn} must be divisible by num_heads, got {num_heads}")
        self.d_rnn, self.num_heads, self.d_conv = d_rnn, num_heads, d_conv
        self.gate_scale = positive("gate_scale", gate_scale)
        self.in_proj = Linear(d_model, 2 * d_rnn)  # gate branch, recurrent branch
        self.conv = ShortConv(d_rnn, d_conv, silu=False, zero_bias=True)
        dh = d_rnn // num_heads
        self.gate_weight = nn.Parameter(torch.randn(2, num_heads, dh, dh) / math.sqrt(dh))  # W_a, W_x
        self.gate_bias = nn.Parameter(torch.zeros(2, d_rnn))
        a_c = torch.empty(d_rnn).uniform_(0.9, 0.999)      # a^c uniform in [0.9, 0.999]
        a = a_c ** (1 / self.gate_scale)
        self.a_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))  # Lambda, a = sigma(Lambda)
        self.out_proj = Linear(d_rnn, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        sd = state_dtype(dtype)
        state = (self.conv.init_state(batch_size, device, sd),
                 torch.zeros(batch_size, self.d_rnn, device=device, dtype=sd))
        if not self.normalize_first:
            state += (torch.zeros(batch_size, device=device, dtype=sd),)
        return state

    def rg_lru_coefficients(self, u, started=None):
        """a_t and b_t = sqrt(1 - a_t^2) i_t u_t of the RG-LRU for its input u: (B, T, d_rnn).
        started (B,): where 0, the first step's factor is 1 (normalize_first=False)."""
        B, T, _ = u.shape
        if self.num_heads == 1:  # one dense product (oneDNN), W_a and W_x stacked, bias fused
            w = self.gate_weight.transpose(-1, -2).reshape(-1, self.d_rnn)
            gates = linear(u, w, self.gate_bias.reshape(-1)).view(B, T, 2, -1).movedim(2, 0)
        else:
            heads = u.view(B, T, self.num_heads, -1)
            gates = torch.einsum("bthi,ghij->gbthj", heads, self.gate_weight).reshape(2, B, T, -1)
            gates = gates + self.gate_bias.unsqueeze(1).unsqueeze(1)
        cdt = compute_dtype(u)
        r, i = torch.sigmoid(gates.to(cdt))
        log_a = -self.gate_scale * F.softplus(-self.a_logit.to(cdt)) * r
        multiplier = torch.sqrt((-torch.expm1(2 * log_a)).clamp_min(torch.finfo(cdt).tiny))
        if started is not None and T > 0:
            first = torch.where(started[:, None] > 0, multiplier[:, 0], torch.ones_like(multiplier[:, 0]))
            multiplier = torch.cat([first[:, None], multiplier[:, 1:]], 1)
        return torch.exp(log_a), multiplier * i * u.to(cdt)

    def _run(self, x, state, mode, mask=None):
        conv_state, h, *started = state
        gate, u = self.in_proj(x).chunk(2, dim=-1)
        u, conv_state = self.conv(u, conv_state, mask)
        a_b = self.rg_lru_coefficients(u, started[0] if started else None)
        hs, h = diagonal_recurrence(*a_b, h, mode, mask)
        if started:  # a sequence has started once it had a valid step
            step = torch.ones_like(started[0]) if mask is None else mask[:, 0, 0].to(h.dtype)
            started = [torch.maximum(started[0], step) if x.shape[1] else started[0]]
        gate = F.gelu(gate, approximate="tanh" if self.gate_act == "gelu_tanh" else "none")
        out = self.out_proj(gate * hs.to(x.dtype))
        return out, (conv_state, h, *started)
