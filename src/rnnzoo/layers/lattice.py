"""Lattice (Karami & Mirrokni 2025, "Lattice: Learning to Efficiently Compress the Memory",
arXiv:2504.05646): K unit-norm memory slots per head updated only with what is orthogonal
to them (ops/lattice.py), in the block of the other memory layers here:

    q, k, v = silu(shortconv(W_q x, W_k x, W_v x)),  q, k l2-normalised       (per head, K wide)
    beta_t  = sigmoid(w_beta . x_t)                                             (the step size)
    S_t     = Lattice(S_t-1; k_t, v_t, beta_t),  rows of S_0 = the learned slots, normalised
    y       = W_o [RMSNorm(S_t^T q_t) * sigmoid(W_g x)]

State: (S (B, H, K, K), the short-conv state); init_state holds the learned initial slots.
Modes: `sequential` only (the paper's chunkwise form is an approximation of this recurrence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.layers.titans import memory_qkv
from rnnzoo.ops.lattice import lattice_sequential, lattice_step
from rnnzoo.registry import register


@register("lattice", family="matrix", paper="Karami & Mirrokni 2025, arXiv:2504.05646 (Lattice)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2))
class Lattice(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, K, K) unit-norm rows, conv state)."""

    modes = ("sequential",)

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 d_conv: int = 4, norm_eps: float = 1e-6):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.num_heads, self.head_dim = H, K
        self.norm_eps = positive("norm_eps", norm_eps)
        self.qkv_proj = nn.Linear(d_model, 3 * H * K, bias=False)
        self.conv = ShortConv(3 * H * K, d_conv, bias=False)
        self.beta_proj = nn.Linear(d_model, H)
        self.slots = nn.Parameter(torch.randn(H, K, K))
        self.g_proj = nn.Linear(d_model, H * K)
        self.norm = HeadNorm(H, K, kind="rms", eps=norm_eps)
        self.o_proj = nn.Linear(H * K, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        S0 = F.normalize(self.slots.to(sdt), dim=-1, eps=1e-12)
        S0 = S0.to(device if device is not None else S0.device)
        return (S0.expand(batch_size, -1, -1, -1).clone(),
                self.conv.init_state(batch_size, S0.device, sdt))

    def op_inputs(self, x, conv_state):
        """q, k, v (B, T, H, K); beta (B, T, H); new conv state."""
        q, k, v, conv_state = memory_qkv(self, x, conv_state)
        return q, k, v, torch.sigmoid(self.beta_proj(x).to(q.dtype)), conv_state

    def op_output(self, o, x):
        gate = torch.sigmoid(self.g_proj(x).to(o.dtype)).view(o.shape)
        return self.o_proj((self.norm(o) * gate).flatten(2).to(x.dtype))

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, v, beta, conv_state = self.op_inputs(x, conv_state)
        o, S = lattice_sequential(q, k, v, beta, S.to(q.dtype))
        return self.op_output(o, x), (S.to(state[0].dtype), conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, v, beta, conv_state = self.op_inputs(x_t[:, None], conv_state)
        o, S = lattice_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], S.to(q.dtype))
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S.to(state[0].dtype), conv_state)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"
