"""Gated linear attention (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635, section 4.4).

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t / sqrt(d_k)
    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/tau)     (rank decay_rank 16, tau = 16)
    r_t = swish(x_t W_r + b_r),   y_t = (r_t * GroupNorm_h(o_t)) W_O

The decay enters in log space, log alpha = logsigmoid(.) / tau. Key width
expand_k * d_model, value width expand_v * d_model (the paper: 0.5 and 1).
Modes: `sequential` and `chunk` (the chunkwise form with secondary chunking).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def _head_width(name, d_model, expand, num_heads):
    width = expand * d_model
    if width != int(width) or int(width) % num_heads or width < num_heads:
        raise ValueError(f"{name} * d_model must be a positive multiple of num_heads={num_heads}, "
                         f"got {name}={expand!r} with d_model={d_model}")
    return int(width) // num_heads


@register("gla", family="matrix", paper="Yang et al. 2024, arXiv:2312.06635",
          tiny=dict(d_model=8, num_heads=2, chunk_size=4, subchunk_size=2, decay_rank=4))
class GLA(RecurrentLayer):
    """x: (B, T, d_model) -> y; state S: (B, num_heads, key head dim, value head dim)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, expand_k: float = 0.5,
                 expand_v: float = 1.0, decay_rank: int = 16, gate_normalizer: float = 16.0,
                 chunk_size: int = 64, subchunk_size: int = 16):
        super().__init__(d_model)
        positive_int("num_heads", num_heads)
        for name, value in (("decay_rank", decay_rank), ("chunk_size", chunk_size),
                            ("subchunk_size", subchunk_size)):
            positive_int(name, value)
        if not gate_normalizer > 0:
            raise ValueError(f"gate_normalizer must be > 0, got {gate_normalizer!r}")
        self.num_heads = num_heads
        self.key_dim = _head_width("expand_k", d_model, expand_k, num_heads)
        self.value_dim = _head_width("expand_v", d_model, expand_v, num_heads)
        self.chunk_size, self.subchunk_size, self.gate_normalizer = (
            chunk_size, subchunk_size, gate_normalizer)
        H, K, V = num_heads, self.key_dim, self.value_dim
        self.qk = Linear(d_model, 2 * H * K, bias=False)
        self.v = Linear(d_model, H * V, bias=False)
        self.gate_down = Linear(d_model, decay_rank, bias=False)
        self.gate_up = Linear(decay_rank, H * K)
        self.out_gate = Linear(d_model, H * V)
        self.norm = HeadNorm(H, V, kind="rms")
        self.out_proj = Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.num_heads, self.key_dim, self.value_dim,
                           device=device, dtype=state_dtype(dtype))

    def lion_inputs(self, x):
        """q, k (B, T, H, K), v (B, T, H, V), the log-decay per key channel and the scale: the
        op's inputs (also those of bidirectional=True, layers/bidirectional.py)."""
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.key_dim, self.value_dim
        q, k = self.qk(x).view(B, T, 2, H, K).unbind(2)
        v = self.v(x).view(B, T, H, V)
        gate = self.gate_up(self.gate_down(x)).view(B, T, H, K).to(state_dtype(x.dtype))
        return q, k, v, F.logsigmoid(gate) / self.gate_normalizer, 1 / math.sqrt(K)

    def lion_output(self, o, x):
        """Per-head norm times the silu output gate, then the output projection."""
        return self.out_proj(rms_gate(o.flatten(2), self.norm.weight, self.value_dim, self.norm.eps,
                                      self.out_gate(x), "silu"))  # ops.native.head_norm

    def _forward(self, x, state, mode):
        q, k, v, log_alpha, scale = self.lion_inputs(x)
        kw = dict(scale=scale, initial_state=state)
        if mode == "chunk":
            o, state = gated_linear_attention(q, k, v, log_alpha, chunk_size=self.chunk_size,
                                              subchunk_size=self.subchunk_size, **kw)
        else:
            o, state = gated_linear_attention_recurrent(q, k, v, log_alpha, **kw)
        return self.lion_output(o, x), state
