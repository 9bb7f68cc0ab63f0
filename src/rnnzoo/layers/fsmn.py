"""FSMN, the feedforward sequential memory network (Zhang, Liu, Jiang, Hu, Wei & Dai 2015,
"Feedforward Sequential Memory Networks: A New Structure to Learn Long-term Dependency",
arXiv:1512.08301), the recurrence-free memory block MossFormer2 builds on.

A learnable FIR filter over the last N inputs, per channel (vFSMN) or shared by all
channels (sFSMN), and the layer's output from the input and its memory:

    m_t = sum_{i=0}^{N} a_i * x_{t-i}             a_i: (d_model,) vFSMN, a scalar sFSMN
    y_t = W x_t + W~ m_t + b                      (the paper's next-layer input, before f)

(unidirectional: the paper's look-ahead taps would see the future). The memory is a causal
depthwise convolution with a filter of N + 1 taps, layers/conv.py's `causal_conv1d` with
weight[:, k] = a_{N-k}; its impulse response is the taps themselves. Initialisation (ours):
a_i ~ U(-1, 1) / sqrt(N + 1), W and W~ as nn.Linear.

State: the last N inputs (B, order, d_model), oldest first, zeros at the start.
Modes: `sequential` (the window, step by step), `conv` (the whole convolution at once).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import MaskedLayer
from rnnzoo.layers.conv import causal_conv1d
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("fsmn", family="diagonal", paper="Zhang et al. 2015, arXiv:1512.08301",
          tiny=dict(d_model=4, order=3))
class FSMN(MaskedLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state: the last `order` inputs
    (B, order, d_model).

    Options: order (N, the look-back order: N + 1 taps a_0 .. a_N), memory ("vector":
    vFSMN, one filter per channel, or "scalar": sFSMN, one filter for all).
    Parameters: taps (d_model, N + 1) or (N + 1,), indexed by lag; proj (W, b);
    memory_proj (W~)."""

    modes = ("sequential", "conv")

    def __init__(self, d_model: int, order: int = 20, memory: str = "vector"):
        super().__init__(d_model)
        self.order = positive_int("order", order)
        self.memory = choice("memory", memory, ("vector", "scalar"))
        shape = (d_model, order + 1) if memory == "vector" else (order + 1,)
        self.taps = nn.Parameter(torch.empty(shape).uniform_(-1, 1) / math.sqrt(order + 1))
        self.proj = Linear(d_model, d_model)
        self.memory_proj = Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.order, self.d_model, device=device,
                           dtype=state_dtype(dtype))

    def filter(self, dtype=torch.float32) -> torch.Tensor:
        """a: (d_model, N + 1), a[:, i] the tap of lag i."""
        return self.taps.to(dtype).expand(self.d_model, self.order + 1)

    def _memory(self, u, history, mode, mask):
        """m (B, T, d_model) and the new history; u in the compute dtype."""
        a = self.filter(u.dtype)
        if mode == "conv":
            return causal_conv1d(u, a.flip(-1), None, history, mask)
        window_taps = a.flip(-1).T                                  # (N + 1, d_model), oldest first
        history = history.to(u.dtype)
        out = []
        for t in range(u.shape[1]):
            window = torch.cat([history, u[:, t:t + 1]], 1)          # (B, N + 1, d_model)
            out.append((window * window_taps).sum(1))
            new = window[:, 1:]
            history = new if mask is None else torch.where(mask[:, t:t + 1], new, history)
        return torch.stack(out, 1), history

    def _run(self, x, state, mode, mask=None):
        cdt = compute_dtype(x)
        u = x.to(cdt)
        if mask is not None:  # padding never enters (NaN included)
            u = torch.where(mask, u, 0.0)
        m, history = self._memory(u, state, mode, mask)
        y = self.proj(u.to(x.dtype)) + self.memory_proj(m.to(x.dtype))
        return y, history.to(state.dtype)

    def auto_mode(self, x):
        return "conv"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, memory={self.memory!r}"
