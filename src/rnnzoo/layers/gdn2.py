"""Gated DeltaNet-2 (GDN-2, "Gated DeltaNet-2: Decoupling Erase and Write in Linear
Attention", NVIDIA; fla-core's `gdn2`): KDA's per-channel decay with the scalar beta split
into an erase gate per key channel and a write gate per value channel.

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x))
    q, k    = q / |q|, k / |k|                                       (per head)
    g       = -exp(A_log) softplus(W_f_up W_f_down x + dt_bias)      (log-decay per key channel)
    b       = sigmoid(W_b x)  (K per head; 2 sigmoid with allow_neg_eigval),   w = sigmoid(W_w x)  (V per head)
    S_t     = (I - k_t (b_t o k_t)^T) diag(exp g_t) S_{t-1} + k_t (w_t o v_t)^T,   o_t = S_t^T q_t / sqrt(K)
    y       = W_o [RMSNorm(o) * sigmoid(W_g_up W_g_down x + bias)]

b = w = beta (one scalar a head) is KDA. The recurrence is ops.erase_delta's with erase key
b o k and value w o v. State: (S (B, H, K, V), short-conv state (B, d_conv - 1, H (2K + V))).
Modes: `sequential` (the loop) and `chunk` (the UT transform with per-channel decay).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent, erase_delta_step
from rnnzoo.registry import register


@register("gdn2", family="matrix", paper="Gated DeltaNet-2 (NVIDIA 2025; fla-core ops/gdn2)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2, chunk_size=4, subchunk_size=2))
class GDN2(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, K, expand_v K), conv state)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 1, d_conv: int = 4, chunk_size: int = 32,
                 subchunk_size: int = 8, allow_neg_eigval: bool = False, norm_eps: float = 1e-5):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        V = K * positive_int("expand_v", expand_v)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.subchunk_size = positive_int("subchunk_size", subchunk_size)
        if chunk_size % subchunk_size:
            raise ValueError(f"subchunk_size must divide chunk_size={chunk_size}, "
                             f"got {subchunk_size}")
        self.num_heads, self.head_dim, self.value_dim = H, K, V
        self.allow_neg_eigval = flag("allow_neg_eigval", allow_neg_eigval)
        self.qkv_proj = nn.Linear(d_model, H * (2 * K + V), bias=False)
        self.conv = ShortConv(H * (2 * K + V), d_conv, bias=False)
        self.f_proj = nn.Sequential(nn.Linear(d_model, V, bias=False), nn.Linear(V, H * K, bias=False))
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        dt = torch.empty(H * K).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.b_proj = nn.Linear(d_model, H * K, bias=False)
        self.w_proj = nn.Linear(d_model, H * V, bias=False)
        self.g_proj = nn.Sequential(nn.Linear(d_model, V, bias=False), nn.Linear(V, H * V))
        self.norm = HeadNorm(H, V, kind="rms", eps=norm_eps)
        self.o_proj = nn.Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        S = torch.zeros(batch_size, self.num_heads, self.head_dim, self.value_dim,
                        device=device, dtype=sdt)
        return S, self.conv.init_state(batch_size, device, sdt)

    def op_inputs(self, x, conv_state):
        """q, k, g, b (B, T, H, K), v, w (B, T, H, V), new conv state."""
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_dim, self.value_dim
        cdt = compute_dtype(x)
        qkv, conv_state = self.conv(self.qkv_proj(x).to(cdt), conv_state)
        q, k, v = qkv.split([H * K, H * K, H * V], -1)
        q = F.normalize(q.reshape(B, T, H, K), dim=-1, eps=1e-6)
        k = F.normalize(k.reshape(B, T, H, K), dim=-1, eps=1e-6)
        f = self.f_proj(x).to(cdt).reshape(B, T, H, K) + self.dt_bias.to(cdt).view(H, K)
        g = -self.A_log.to(cdt).exp()[:, None] * F.softplus(f)
        b = torch.sigmoid(self.b_proj(x).to(cdt)).reshape(B, T, H, K)
        if self.allow_neg_eigval:
            b = 2 * b
        w = torch.sigmoid(self.w_proj(x).to(cdt)).reshape(B, T, H, V)
        return q, k, v.reshape(B, T, H, V), g, b, w, conv_state

    def op_output(self, o, x):
        """Per-head RMSNorm times the sigmoid output gate, then W_o. o: (B, T, H, V)."""
        gate = torch.sigmoid(self.g_proj(x).to(o.dtype)).view(o.shape)
        return self.o_proj((self.norm(o) * gate).flatten(2).to(x.dtype))

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, v, g, b, w, conv_state = self.op_inputs(x, conv_state)
        if mode == "chunk":
            o, S = erase_delta(q, k, w * v, g, b * k, initial_state=S, chunk_size=self.chunk_size,
                               subchunk_size=self.subchunk_size)
        else:
            o, S = erase_delta_recurrent(q, k, w * v, g, b * k, initial_state=S)
        return self.op_output(o, x), (S, conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, v, g, b, w, conv_state = self.op_inputs(x_t[:, None], conv_state)
        q, k, v, g, b, w = (t[:, 0] for t in (q, k, v, g, b, w))
        o, S = erase_delta_step(q, k, w * v, g, b * k, S, self.head_dim ** -0.5)
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"value_dim={self.value_dim}, allow_neg_eigval={self.allow_neg_eigval}, "
                f"chunk_size={self.chunk_size}, subchunk_size={self.subchunk_size}")
