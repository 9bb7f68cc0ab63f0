"""Lattice (Karami, Pascanu & Mirrokni, "Lattice: Learning to Efficiently Compress the
Memory", arXiv:2504.05646): per head, m unit-norm memory slots that decode each value from
its key (a latent code over the slots) and are written only with what is orthogonal to
them (ops/lattice.py), in the block of the other memory layers here:

    q, k    = l2norm(silu(shortconv(W_q x, W_k x)))     (B, T, H, m)   the latent codes
    v       = silu(shortconv(W_v x))                     (B, T, H, V)
    beta_t  = sigmoid(w_beta . x_t)                      (B, T, H)      the step size
    S_t     = Lattice(S_t-1; k_t, v_t, beta_t),  rows of S_0 = the learned slots, normalised
    y       = W_o [RMSNorm(S_t^T q_t) * sigmoid(W_g x)]

From the paper's abstract, its TL;DR and its reviews (the method section itself was not
available to us; docs/lattice.md lists the sources): the state is a fixed number m of
memory slots, normalised; a token's key is a latent code that reconstructs the input from
the slots; the update is one gradient step on that reconstruction; each slot takes in only
what is orthogonal to it; the normalisation acts as a state- and input-dependent gate; the
step is Riemannian gradient descent on the sphere. Ours: the block around the recurrence
(short convolution, l2-normalised q and k, the sigmoid step size beta, the gated RMSNorm
output), which follows the other test-time memories in rnnzoo, and the name `num_slots`.

Options: num_slots (m, default head_dim), head_dim (V, the slots' width).
State: (S (B, H, m, V), the short-conv state); init_state holds the learned initial slots.
Modes: `sequential` only: the paper's chunk-wise form approximates the recurrence, so it is
not the same model and is not offered as a mode (docs/lattice.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._delta_block import gated_head_output, l2norm
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops.lattice import lattice_sequential, lattice_step
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("lattice", family="matrix",
          paper="Karami, Pascanu & Mirrokni 2025, arXiv:2504.05646 (Lattice)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, num_slots=2, d_conv=2))
class Lattice(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, m, V) unit-norm rows, conv state)."""

    modes = ("sequential",)

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 num_slots: int | None = None, d_conv: int = 4, norm_eps: float = 1e-6):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        V = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        m = positive_int("num_slots", V if num_slots is None else num_slots)
        self.num_heads, self.head_dim, self.num_slots = H, V, m
        self.norm_eps = positive("norm_eps", norm_eps)
        self.qkv_proj = Linear(d_model, H * (2 * m + V), bias=False)
        self.conv = ShortConv(H * (2 * m + V), d_conv, bias=False)
        self.beta_proj = Linear(d_model, H)
        self.slots = nn.Parameter(torch.randn(H, m, V))
        self.g_proj = Linear(d_model, H * V)
        self.norm = HeadNorm(H, V, kind="rms", eps=norm_eps)
        self.o_proj = Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        S0 = F.normalize(self.slots.to(sdt), dim=-1, eps=1e-12)
        S0 = S0.to(device if device is not None else S0.device)
        return (S0.expand(batch_size, -1, -1, -1).clone(),
                self.conv.init_state(batch_size, S0.device, sdt))

    def op_inputs(self, x, conv_state):
        """q, k (B, T, H, m) unit norm; v (B, T, H, V); beta (B, T, H); new conv state."""
        B, T, _ = x.shape
        H, m = self.num_heads, self.num_slots
        qkv, conv_state = self.conv(self.qkv_proj(x).to(compute_dtype(x)), conv_state)
        q, k, v = qkv.view(B, T, H, 2 * m + self.head_dim).split([m, m, self.head_dim], -1)
        q, k = l2norm(q), l2norm(k)  # x / max(|x|, 1e-6), two passes each way
        return q, k, v, torch.sigmoid(self.beta_proj(x).to(q.dtype)), conv_state

    def op_output(self, o, x):
        """o_proj(norm(o) sigmoid(g_proj(x))): the RMS head norm and gate fused in C on a CPU
        (`_delta_block.gated_head_output`; autograd's passes were ~15% of the layer)."""
        return gated_head_output(self, o, x)

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
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"num_slots={self.num_slots}")
