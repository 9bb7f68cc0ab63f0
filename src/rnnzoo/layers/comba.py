"""Comba (Hu et al. 2025, "Comba: Improving Bilinear RNNs with Closed-loop Control",
arXiv:2506.02475): a scalar-plus-low-rank (SPLR) transition with state and output feedback.

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x))
    q, k    = q / |q|, k / |k|                                         (per head)
    p       = sigmoid(d) k           (inner_decay: the state-feedback key, d a learned scalar a head)
    q       = q - D p                (output_correction: the output feedback, D = correction_factor at init)
    beta    = sigmoid(W_b x),   g = -exp(A_log) softplus(W_a x + dt_bias)      (Mamba-2's decay)
    S_t     = (e^{g_t} I - beta_t k_t p_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(K)
    y       = W_o [RMSNorm(o) * sigmoid(W_g x)]      (RMSNorm(o) alone without output_gate)

The transition is scalar plus low rank (SPLR): the erase reads the state before the decay,
unlike Gated DeltaNet's e^g (I - beta k k^T), which scales the erase by the decay too (fla's
Comba kernel and naive chunk form agree; its naive recurrent form erases after the decay).
The recurrence is ops.erase_delta's (before_decay) with erase key beta p and value beta v. State: (S (B, H, K, V),
short-conv state (B, d_conv - 1, H (2K + V))). Modes: `sequential` (the loop) and `chunk`
(the UT transform).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.checks import flag, positive_int, real
from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers._delta_block import delta_qkv, delta_state, gated_head_output
from rnnzoo.layers._softplus import inverse_softplus, softplus
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent, erase_delta_step
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("comba", family="matrix", paper="Hu et al. 2025, arXiv:2506.02475 (Comba)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2, chunk_size=4))
class Comba(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, K, expand_v K), conv state)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 1, d_conv: int = 4, output_gate: bool = True,
                 output_correction: bool = True, inner_decay: bool = True,
                 correction_factor: float = 1.0, chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        V = K * positive_int("expand_v", expand_v)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.num_heads, self.head_dim, self.value_dim = H, K, V
        self.qkv_proj = Linear(d_model, H * (2 * K + V), bias=False)
        self.conv = ShortConv(H * (2 * K + V), d_conv, bias=False)
        self.a_proj = Linear(d_model, H, bias=False)
        self.b_proj = Linear(d_model, H, bias=False)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        dt = torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.decay = nn.Parameter(torch.ones(H)) if flag("inner_decay", inner_decay) else None
        correction_factor = real("correction_factor", correction_factor)
        self.D = nn.Parameter(torch.full((H,), correction_factor)) \
            if flag("output_correction", output_correction) else None
        self.g_proj = Linear(d_model, H * V, bias=False) if flag("output_gate", output_gate) \
            else None
        self.norm = HeadNorm(H, V, kind="rms", eps=norm_eps)
        self.o_proj = Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return delta_state(self, batch_size, device, dtype)

    def op_inputs(self, x, conv_state):
        """q, k, p (B, T, H, K), v (B, T, H, V), g (B, T, H), beta (B, T, H), new conv state:
        Comba's S_t = (e^g I - beta k p^T) S + beta k v^T, o_t = S_t^T q_t / sqrt(K)."""
        cdt = compute_dtype(x)
        q, k, v, conv_state = delta_qkv(self, x, conv_state)
        p = k if self.decay is None else k * torch.sigmoid(self.decay.to(cdt))[:, None]
        if self.D is not None:
            q = torch.addcmul(q, p, -self.D.to(cdt)[:, None])
        g = -self.A_log.to(cdt).exp() * softplus(self.a_proj(x).to(cdt) + self.dt_bias.to(cdt))
        beta = torch.sigmoid(self.b_proj(x).to(cdt))
        return q, k, p, v, g, beta, conv_state

    def op_output(self, o, x):
        """Per-head RMSNorm (times the sigmoid output gate), then W_o. o: (B, T, H, V)."""
        return gated_head_output(self, o, x)

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, p, v, g, beta, conv_state = self.op_inputs(x, conv_state)
        b = beta[..., None]
        if mode == "chunk":
            o, S = erase_delta(q, k, b * v, g, b * p, initial_state=S, before_decay=True,
                               chunk_size=self.chunk_size)
        else:
            o, S = erase_delta_recurrent(q, k, b * v, g, b * p, initial_state=S, before_decay=True)
        return self.op_output(o, x), (S, conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, p, v, g, beta, conv_state = self.op_inputs(x_t[:, None], conv_state)
        b = beta[:, 0, :, None]
        o, S = erase_delta_step(q[:, 0], k[:, 0], b * v[:, 0], g[:, 0], b * p[:, 0], S,
                                self.head_dim ** -0.5, before_decay=True)
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"value_dim={self.value_dim}, inner_decay={self.decay is not None}, "
                f"output_correction={self.D is not None}, output_gate={self.g_proj is not None}, "
                f"chunk_size={self.chunk_size}")
