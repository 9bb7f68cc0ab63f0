"""Helpers shared by the gated-linear-attention layers: a causal depthwise convolution
whose last inputs are part of the layer state, a per-head normalisation, option checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def positive_int(name: str, value) -> None:
    """Raise ValueError naming the option unless `value` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ShortConv(nn.Module):
    """Causal depthwise conv1d over time (H3 / Mamba / GLA's "short convolution").

    forward(x, state) with x: (B, T, D) and state: (B, D, kernel_size - 1), the inputs
    before x (zeros at the sequence start) -> (y, next state), y: (B, T, D). The state is
    kept in float32 (float64 for float64 x).
    """

    def __init__(self, dim: int, kernel_size: int = 4, activation: bool = True):
        super().__init__()
        positive_int("conv_size", kernel_size)
        self.dim, self.kernel_size, self.activation = dim, kernel_size, activation
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.dim, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(self, x, state):
        xp = torch.cat([state.to(x.dtype), x.transpose(1, 2)], 2)  # (B, D, W - 1 + T)
        T, w = x.shape[1], self.conv.weight[:, 0]  # (D, kernel_size)
        # a sum over the few taps: faster than conv1d for small kernels on CPU
        y = sum(w[:, i, None] * xp[:, :, i:i + T] for i in range(self.kernel_size))
        y = (y + self.conv.bias[:, None]).transpose(1, 2)
        new_state = xp[:, :, xp.shape[2] - (self.kernel_size - 1):].to(state.dtype)
        return (F.silu(y) if self.activation else y), new_state


class HeadNorm(nn.Module):
    """Normalisation of each head's output separately (RetNet's GroupNorm with one group a
    head; RMSNorm per head in GLA and Mamba-2). x: (..., H, D) -> same shape."""

    def __init__(self, num_heads: int, head_dim: int, kind: str = "rms", eps: float = 1e-5):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim)) if kind == "layer" else None

    def forward(self, x):
        D = x.shape[-1]
        if self.kind == "rms":
            return F.rms_norm(x, (D,), eps=self.eps) * self.weight
        return F.layer_norm(x, (D,), eps=self.eps) * self.weight + self.bias
