"""PGN, the Parallel Gated Network (Jia, Lin, Wang, Chen, Guo & Wan 2024, "PGN: The RNN's New
Successor is Effective for Long-Range Time Series Forecasting", NeurIPS 2024,
arXiv:2409.17703).

An RNN reaches x_{t-k} through k transitions; PGN replaces the hidden state by a
Historical Information Extraction (HIE) layer, one linear map of the previous W inputs,
and keeps a single gated unit on top of it:

    H_t   = b_H + sum_{k=1..W} M_k x_{t-k}                 HIE: (B, T, d_hidden)
    [g; c] = W_g [x_t; H_t] + b_g                          the gated unit
    o_t   = sigmoid(g) * H_t + (1 - sigmoid(g)) * tanh(c)
    y_t   = W_out o_t                                      (back to d_model)

so every past input within the window reaches y_t through one map (the paper's O(1)
propagation path), and every step is computed at once. W = window_size (the paper's
HIE spans the whole input, W = L - 1); zeros stand before the sequence.

State: the last W inputs (B, window_size, d_model), oldest first. Modes: `sequential`
(the window slid one step at a time) and `conv` (HIE as one causal convolution over the
sequence). There is no recurrence to scan: the parallel form is the convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import MaskedLayer
from rnnzoo.registry import register


@register("pgn", family="diagonal", paper="Jia et al. 2024, arXiv:2409.17703",
          tiny=dict(d_model=3, d_hidden=4, window_size=3))
class PGN(MaskedLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state: the last window_size inputs
    (B, window_size, d_model).

    Options: d_hidden (the HIE and gate width, default d_model), window_size (W, the HIE's
    look-back). Parameters: hie (M: (d_hidden, d_model, W), M[:, :, W - k] = M_k, and b_H),
    gate (W_g, b_g), out_proj (W_out)."""

    modes = ("sequential", "conv")

    def __init__(self, d_model: int, d_hidden: int | None = None, window_size: int = 64):
        super().__init__(d_model)
        self.d_hidden = positive_int("d_hidden", d_model if d_hidden is None else d_hidden)
        self.window_size = positive_int("window_size", window_size)
        bound = 1 / math.sqrt(d_model * window_size)  # nn.Conv1d's default
        self.hie_weight = nn.Parameter(
            torch.empty(self.d_hidden, d_model, window_size).uniform_(-bound, bound))
        self.hie_bias = nn.Parameter(torch.empty(self.d_hidden).uniform_(-bound, bound))
        self.gate = nn.Linear(d_model + self.d_hidden, 2 * self.d_hidden)
        self.out_proj = nn.Linear(self.d_hidden, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.window_size, self.d_model, device=device,
                           dtype=state_dtype(dtype))

    def hie(self, u, history, mode, mask=None):
        """H (B, T, d_hidden) from the W inputs before each step, and the new history."""
        W = self.window_size
        weight, bias = self.hie_weight.to(u.dtype), self.hie_bias.to(u.dtype)
        xp = torch.cat([history.to(u.dtype), u], 1)                        # (B, W + T, d)
        if mode == "conv":
            H = F.conv1d(xp[:, :-1].transpose(1, 2), weight, bias).transpose(1, 2)
            if mask is None:
                return H, xp[:, xp.shape[1] - W:]
            n = mask.flatten(1).sum(1)              # inputs n .. n + W - 1 of xp are the
            idx = n.view(-1, 1) + torch.arange(W, device=u.device)   # last W valid ones
            return H, xp.gather(1, idx.unsqueeze(-1).expand(-1, -1, xp.shape[-1]))
        taps = weight.permute(2, 1, 0)                                   # (W, d_model, d_hidden)
        out = []
        for t in range(u.shape[1]):
            out.append(torch.einsum("bkd,kdh->bh", history, taps) + bias)
            new = torch.cat([history[:, 1:], u[:, t:t + 1]], 1)
            history = new if mask is None else torch.where(mask[:, t:t + 1], new, history)
        return torch.stack(out, 1), history

    def gated_unit(self, u, H):
        """o_t = sigmoid(g) H_t + (1 - sigmoid(g)) tanh(c), [g; c] = W_g [x_t; H_t] + b_g."""
        g, c = self.gate(torch.cat([u, H], -1)).chunk(2, -1)
        g = torch.sigmoid(g)
        return g * H + (1 - g) * torch.tanh(c)

    def _run(self, x, state, mode, mask=None):
        cdt = compute_dtype(x)
        u = x.to(cdt)
        if mask is not None:  # padding never enters (NaN included)
            u = torch.where(mask, u, 0.0)
        H, history = self.hie(u, state.to(cdt), mode, mask)
        o = self.gated_unit(u.to(x.dtype), H.to(x.dtype))
        y = self.out_proj(o)
        return y, history.to(state.dtype)

    def auto_mode(self, x):
        return "conv"

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_hidden={self.d_hidden}, "
                f"window_size={self.window_size}")
