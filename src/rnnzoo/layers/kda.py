"""Kimi Delta Attention (Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention
Architecture", arXiv:2510.26692, section 3): the gated delta rule with a decay per key channel.

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x))
    q, k    = q / |q|, k / |k|           (per head; with sqrt_eps / sqrt(|q|^2 + 1e-6), fla's)
    g       = -exp(A_log) softplus(W_f_up W_f_down x + dt_bias)    (log-decay, one per key channel)
    beta    = sigmoid(W_b x)               (2 sigmoid(W_b x) with allow_neg_eigval, Grazzi et al. 2025)
    S_t     = (I - beta_t k_t k_t^T) diag(exp g_t) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(K)
    y       = W_o [RMSNorm(o) * sigmoid(W_g_up W_g_down x)]          (per-head norm, low-rank gate)

The decay and output-gate projections are low rank, of rank the value head width, as in the
paper. State: (S (B, H, K, V), short-conv state (B, d_conv - 1, H (2K + V))).
Modes: `sequential` (the loop of ops.chunk.kda) and `chunk` (its chunkwise WY form).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive_int
from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers._delta_block import delta_qkv, delta_state, gated_head_output
from rnnzoo.layers._softplus import inverse_softplus, softplus
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops import backend, first_order
from rnnzoo.ops.chunk.kda import kda, kda_recurrent, kda_step
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


def _log_decay_plain(f, A_log):
    """`_LogDecay`'s forward in plain differentiable ops (its `twice`)."""
    return F.softplus(f) * -A_log.exp()[:, None]


class _LogDecay(first_order.Function):
    """g = -exp(A_log)_h softplus(f): f (B, T, H, K), A_log (H,) -> (B, T, H, K), in two
    elementwise passes forward and five backward (df = -exp(A_log) sigmoid(f) dg, dA_log =
    -exp(A_log) sum dg softplus(f)); autograd of the plain form took about twice as long (3.9
    against 6.9 ms fwd+bwd at the #17 size). Eager CPU only (KDA.op_inputs, where the C
    recurrence runs): one derivative, no jvp."""

    @staticmethod
    def forward(ctx, f, A_log):
        a = A_log.exp()[:, None]
        sp = F.softplus(f)
        ctx.save_for_backward(f, sp, a, A_log)
        return sp * -a

    @staticmethod
    def twice(ctx, dg):  # under create_graph: autograd through the plain form
        f, _, _, A_log = ctx.saved_tensors
        return first_order.replay(_log_decay_plain, (f, A_log), (dg,), ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dg):
        f, sp, a, _ = ctx.saved_tensors
        # df in f's layout (dg may come back strided from the recurrence: a product of it
        # first would be strided too, and the projection's backward would copy it)
        return torch.sigmoid(f).mul_(-a).mul_(dg), -(sp * dg).sum((0, 1, 3)) * a[:, 0]


@register("kda", family="matrix", paper="Kimi Team 2025, arXiv:2510.26692 (Kimi Linear)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2, chunk_size=4, subchunk_size=2))
class KDA(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, K, expand_v K), conv state)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 1, d_conv: int = 4, chunk_size: int = 32,
                 subchunk_size: int = 8, allow_neg_eigval: bool = False, norm_eps: float = 1e-5,
                 sqrt_eps: bool = False):
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
        self.sqrt_eps = flag("sqrt_eps", sqrt_eps)
        self.qkv_proj = Linear(d_model, H * (2 * K + V), bias=False)
        self.conv = ShortConv(H * (2 * K + V), d_conv, bias=False)
        self.f_proj = nn.Sequential(Linear(d_model, V, bias=False), Linear(V, H * K, bias=False))
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        dt = torch.empty(H * K).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.b_proj = Linear(d_model, H, bias=False)
        self.g_proj = nn.Sequential(Linear(d_model, V, bias=False), Linear(V, H * V))
        self.norm = HeadNorm(H, V, kind="rms", eps=norm_eps)
        self.o_proj = Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return delta_state(self, batch_size, device, dtype)

    def _qkv_decay(self, x, conv_state):
        """q, k (B, T, H, K), v (B, T, H, V), the per-channel log-decay g (B, T, H, K), new
        conv state (also GDN2's)."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        cdt = compute_dtype(x)
        q, k, v, conv_state = delta_qkv(self, x, conv_state, self.sqrt_eps)
        down, up = self.f_proj                          # dt_bias as the up product's bias
        f = linear(down(x), up.weight, self.dt_bias.to(up.weight.dtype)).to(cdt).reshape(B, T, H, K)
        A_log = self.A_log.to(cdt)
        g = _LogDecay.apply(f, A_log) if backend.use_native(f, A_log) \
            else -A_log.exp()[:, None] * softplus(f)
        return q, k, v, g, conv_state

    def op_inputs(self, x, conv_state):
        """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H, K), beta (B, T, H), new conv state."""
        q, k, v, g, conv_state = self._qkv_decay(x, conv_state)
        beta = torch.sigmoid(self.b_proj(x).to(compute_dtype(x)))
        if self.allow_neg_eigval:
            beta = 2 * beta
        return q, k, v, g, beta, conv_state

    def op_output(self, o, x):
        """Per-head RMSNorm times the sigmoid output gate, then W_o. o: (B, T, H, V)."""
        return gated_head_output(self, o, x)

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, v, g, beta, conv_state = self.op_inputs(x, conv_state)
        if mode == "chunk":
            o, S = kda(q, k, v, g, beta, initial_state=S, chunk_size=self.chunk_size,
                       subchunk_size=self.subchunk_size)
        else:
            o, S = kda_recurrent(q, k, v, g, beta, initial_state=S)
        return self.op_output(o, x), (S, conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, v, g, beta, conv_state = self.op_inputs(x_t[:, None], conv_state)
        o, S = kda_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], S, self.head_dim ** -0.5)
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"value_dim={self.value_dim}, allow_neg_eigval={self.allow_neg_eigval}, "
                f"chunk_size={self.chunk_size}, subchunk_size={self.subchunk_size}")
