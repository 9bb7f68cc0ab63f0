"""A causal depthwise 1-d convolution that carries its input history as a state.

Mamba's and Griffin's blocks run a short causal convolution (width K, one
filter per channel) before their recurrence. Streaming it needs the last K - 1
inputs, which is the conv state: zeros at the start of a sequence, so that the
first outputs equal those of zero left-padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv_state: torch.Tensor, lengths: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = bias + sum_{k<K} weight[:, k] * x_{t-K+1+k}, channel by channel.

    x: (B, T, C); weight: (C, K); bias: (C,) or None; conv_state: (B, K-1, C), the
    K - 1 inputs before x (oldest first). lengths: (B,) or None; with it, the new
    state holds each sequence's last K - 1 valid inputs.
    Returns y: (B, T, C) in x's dtype and the new conv state in conv_state's dtype.
    """
    K = weight.shape[1]
    xp = torch.cat([conv_state.to(x.dtype), x], dim=1)  # (B, K-1+T, C)
    y = F.conv1d(xp.transpose(1, 2), weight.unsqueeze(1), bias, groups=x.shape[-1])
    if lengths is None:
        new_state = xp[:, xp.shape[1] - (K - 1):]
    else:  # inputs lengths[b] .. lengths[b] + K - 2 of xp are the last K - 1 before the padding
        idx = lengths.view(-1, 1) + torch.arange(K - 1, device=x.device)
        new_state = xp.gather(1, idx.unsqueeze(-1).expand(-1, -1, xp.shape[-1]))
    return y.transpose(1, 2), new_state.to(conv_state.dtype)
