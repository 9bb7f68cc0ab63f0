"""The residual block around any registered token mixer.

    h = x + mixer(RMSNorm(x))             (pre-norm, as in GPT-2/Llama, Mamba and Griffin)
    y = h + GatedMLP(RMSNorm(h))          (when mlp_ratio > 0)

With `mlp_ratio=0` the block is the mixer alone, Mamba's block (Gu & Dao 2023,
arXiv:2312.00752), whose gate lives inside the layer; with an MLP it is the
Griffin / Llama residual block (De et al. 2024, arXiv:2402.19427).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn import functional as F

from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import get_layer_info


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), computed in float32."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


class GatedMLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020, arXiv:2002.05202): W_2 (silu(W_g x) * W_1 x)."""

    def __init__(self, d_model: int, ratio: float = 4.0):
        super().__init__()
        hidden = max(1, int(round(ratio * d_model * 2 / 3)))
        self.up = Linear(d_model, 2 * hidden, bias=False)
        self.down = Linear(hidden, d_model, bias=False)

    def forward(self, x):
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * value)


def build_mixer(name: str, d_model: int, options: dict, *, layer_idx: int, num_layers: int,
                max_len: int):
    """The registered layer `name`, given the stack's hooks where its constructor takes them.

    Hooks: a layer whose constructor accepts `layer_idx` and `num_layers` gets its
    depth (HGRN's lower bound grows with depth); one that accepts `max_len` (the
    attention KV cache) gets the stack's `max_len` unless the options set it.
    """
    cls = get_layer_info(name).cls
    params = inspect.signature(cls.__init__).parameters
    options = dict(options)
    if "layer_idx" in params and "num_layers" in params:
        options.setdefault("layer_idx", layer_idx)
        options.setdefault("num_layers", num_layers)
    if "max_len" in params:
        options.setdefault("max_len", max_len)
    try:
        return cls(d_model=d_model, **options)
    except TypeError as e:
        accepted = [p for p in params if p not in ("self", "d_model")]
        raise ValueError(f"bad option for layer {name!r}: {e}; it accepts {accepted}") from None


class Block(nn.Module):
    """x: (B, T, d_model) -> (B, T, d_model); the mixer's state passes through.

    Packed sequences (x (1, T, d_model), cu_seqlens (N + 1,)) go to the mixer, which
    restarts at each boundary (its short convolution too); the norms and the MLP act
    position by position, so nothing else crosses a boundary.
    """

    def __init__(self, mixer: nn.Module, d_model: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model) if mlp_ratio > 0 else None
        self.mlp = GatedMLP(d_model, mlp_ratio) if mlp_ratio > 0 else None

    def _mlp(self, h):
        return h if self.mlp is None else h + self.mlp(self.mlp_norm(h))

    def forward(self, x, state=None, *, mode="auto", lengths=None, cu_seqlens=None,
                max_seqlen=None):
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        y, state = self.mixer(self.norm(x), state, mode=mode, lengths=lengths, **packed)
        return self._mlp(x + y), state

    def step(self, x_t, state=None):
        y_t, state = self.mixer.step(self.norm(x_t), state)
        return self._mlp(x_t + y_t), state
