"""The short causal convolution in front of a recurrence: depthwise (one filter per
channel), width d_conv, with its input history as a streaming state.

H3 introduced it, Mamba (mamba_ssm's `d_conv`), Griffin, the DeltaNet family, Mamba-2
and xLSTM's mLSTM block run it on the recurrence's inputs:

    y_t = act(bias + sum_{k<d_conv} weight[:, k] * x_{t-d_conv+1+k})       (act: SiLU or none)

Streaming needs the last d_conv - 1 inputs, the conv state (B, d_conv - 1, channels),
oldest first: zeros at the start of a sequence, so that the first outputs equal those of
zero left-padding, and a sequence split in two gives the outputs of the whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive_int
from rnnzoo.ops import backend, sequence_parallel


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv_state: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = bias + sum_{k<K} weight[:, k] * x_{t-K+1+k}, channel by channel.

    x: (B, T, C); weight: (C, K); bias: (C,) or None; conv_state: (B, K-1, C), the K - 1
    inputs before x (oldest first). mask: (B, T, 1) bool marking the valid steps of
    right-padded sequences, or None; with it, the new state holds each sequence's last
    K - 1 valid inputs. Returns y: (B, T, C) in x's dtype and the new conv state in
    conv_state's dtype.
    """
    K = weight.shape[1]
    final = None
    if mask is None and sequence_parallel.active():  # x is this rank's slice of the sequence
        conv_state, final = sequence_parallel.halo(x, conv_state)
    xp = torch.cat([conv_state.to(x.dtype), x], dim=1)  # (B, K-1+T, C)
    bias = None if bias is None else bias.to(x.dtype)
    y = F.conv1d(xp.transpose(1, 2), weight.to(x.dtype).unsqueeze(1), bias, groups=x.shape[-1])
    if mask is None:
        new_state = xp[:, xp.shape[1] - (K - 1):]
    else:  # inputs n .. n + K - 2 of xp are the last K - 1 before the padding, n = length
        n = mask.flatten(1).sum(1)
        idx = n.view(-1, 1) + torch.arange(K - 1, device=x.device)
        new_state = xp.gather(1, idx.unsqueeze(-1).expand(-1, -1, xp.shape[-1]))
    if final is not None:
        new_state = final
    return y.transpose(1, 2), new_state.to(conv_state.dtype)


class ShortConv(nn.Module):
    """forward(x (B, T, channels), state (B, d_conv - 1, channels), mask=None) -> (y, state).

    weight: (channels, d_conv) and bias: (channels,) (absent with bias=False), both
    initialised as nn.Conv1d's U(-1/sqrt(d_conv), 1/sqrt(d_conv)) (the bias at zero with
    zero_bias=True, as in Griffin). `silu` applies SiLU to the output. x is computed in
    its own dtype (the weights are cast to it); the state keeps its dtype. On the CPU in
    float32/float64 without a mask, the fused C kernel `ops.native.conv` runs it (when it
    builds; `ops.backend.use_native`).
    """

    def __init__(self, channels: int, d_conv: int, *, bias: bool = True, silu: bool = True,
                 zero_bias: bool = False):
        super().__init__()
        self.channels = positive_int("channels", channels)
        self.d_conv = positive_int("d_conv", d_conv)
        self.silu = flag("silu", silu)
        bound = 1 / math.sqrt(d_conv)  # nn.Conv1d's default for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(channels, d_conv).uniform_(-bound, bound))
        if not bias:
            self.register_parameter("bias", None)
        elif zero_bias:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_conv - 1, self.channels, device=device, dtype=dtype)

    def forward(self, x, state, mask=None):
        if mask is None and not sequence_parallel.active():
            w, b = self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
            if backend.use_native(x, w, b, state):  # the C kernel, SiLU fused (ops.native.conv)
                from rnnzoo.ops.native import conv as native_conv
                lib = native_conv.load()
                if lib is not None:
                    return native_conv.short_conv(lib, x, w, b, state, self.silu)
        y, state = causal_conv1d(x, self.weight, self.bias, state, mask)
        return (F.silu(y) if self.silu else y), state

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, d_conv={self.d_conv}, bias={self.bias is not None}, "
                f"silu={self.silu}")
