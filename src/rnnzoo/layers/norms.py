"""Normalisations of a layer's heads.

HeadNorm normalises each head's output on its own: RetNet's GroupNorm with one group a
head, RWKV-6's and mLSTM's per-head LayerNorm, the per-head RMSNorm of GLA and HGRN2.

    rms:    y = x / sqrt(mean(x^2) + eps) * weight
    layer:  y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import choice, positive


class HeadNorm(nn.Module):
    """x: (..., num_heads, head_dim) -> same shape; weight (and bias) per head and channel."""

    def __init__(self, num_heads: int, head_dim: int, kind: str = "rms", eps: float = 1e-5):
        super().__init__()
        self.kind = choice("kind", kind, ("rms", "layer"))
        self.eps = positive("norm_eps", eps)  # every layer's HeadNorm takes its norm_eps
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim)) if kind == "layer" else None

    def forward(self, x):
        D = x.shape[-1]
        if self.kind == "rms":
            return F.rms_norm(x, (D,), eps=self.eps) * self.weight
        return F.layer_norm(x, (D,), eps=self.eps) * self.weight + self.bias
