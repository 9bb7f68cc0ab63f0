"""A short causal depthwise convolution over time, followed by SiLU, with a streaming state.

DeltaNet-style blocks put one in front of the recurrence on q, k and v (Yang et al. 2024,
arXiv:2406.06484, after Mamba/H3): y_t = silu(sum_{i<kernel} w_i * x_{t-kernel+1+i}).
Its state is the last kernel-1 inputs, (B, kernel-1, channels), so a sequence split in two
gives the same outputs as the whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """x: (B, T, channels) in the compute dtype, state: (B, kernel-1, channels)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 2:
            raise ValueError(f"conv_size must be an int >= 2, got {kernel!r}")
        self.channels, self.kernel = channels, kernel
        bound = 1 / math.sqrt(kernel)  # nn.Conv1d's default for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(channels, kernel).uniform_(-bound, bound))

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.kernel - 1, self.channels, device=device, dtype=dtype)

    def forward(self, x, state):
        """-> (silu(conv(x)) (B, T, channels), the last kernel-1 inputs)."""
        xs = torch.cat([state.to(x.dtype), x], 1)
        y = F.conv1d(xs.transpose(1, 2), self.weight.to(x.dtype)[:, None], groups=self.channels)
        return F.silu(y.transpose(1, 2)), xs[:, -(self.kernel - 1):]
