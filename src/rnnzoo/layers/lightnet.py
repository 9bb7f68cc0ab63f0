"""LightNet (Qin et al. 2024, "You Only Scan Once: Efficient Multi-dimension Sequential Modeling
with LightNet", arXiv:2405.21022): a linear attention whose decay is additive, not
multiplicative: the key logits are normalised by their running log-sum-exp, per key channel.

    q, k, v = swish(W_q x), W_k x, W_v x                   (k: logits; per head)
    z_t     = log(e^{z_{t-1}} + e^{k_t})                    (z_0 = -inf: the empty sum)
    S_t     = diag(e^{z_{t-1} - z_t}) S_{t-1} + e^{k_t - z_t} v_t^T,   o_t = S_t^T q_t / sqrt(K)
    y       = W_o [RMSNorm(o) * swish(W_g2 W_g1 x)]          (RMSNorm over all heads)

Unrolled, S_t = sum_{j<=t} e^{k_j} v_j^T / sum_{j<=t} e^{k_j} (per key channel): a softmax over
time of the values, which is why one scan suffices in any direction. It is gated linear
attention with the vector log-decay g_t = z_{t-1} - z_t (taken as 0 where z_{t-1} = -inf, as
fla does), so the modes are the ops of ops.chunk.linear. Key head width `expand_ratio`
(default d_model / num_heads), value head width d_model / num_heads.
State: (S (B, H, expand_ratio, V), z (B, H, expand_ratio)); a fresh z is -inf.
Modes: `sequential` (the recurrent loop) and `chunk`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops import backend
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent
from rnnzoo.ops.native import gla_scan as native_gla
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


def additive_gate(k_logits, z0):
    """k_logits: (B, T, H, K), z0: (B, H, K) (-inf: empty) -> (k, g, z_T): the normalised keys
    e^{k_t - z_t}, the log-decays z_{t-1} - z_t (0 where z_{t-1} = -inf) and the last z.
    On the CPU in float32/float64 (`ops.backend.use_native`) one C scan each way
    (ops.native.gla_scan.additive_gate) instead of logcumsumexp and its gradient."""
    lib = native_gla.load() if backend.use_native(k_logits, z0) else None
    if lib is not None:
        return native_gla.additive_gate(lib, k_logits, z0)
    z = torch.logaddexp(z0[:, None], torch.logcumsumexp(k_logits, 1))
    z_prev = torch.cat([z0[:, None], z[:, :-1]], 1)
    g = torch.where(torch.isneginf(z_prev), torch.zeros_like(z), z_prev - z)
    return (k_logits - z).exp(), g, z[:, -1]


@register("lightnet", family="matrix",
          paper="Qin et al. 2024, arXiv:2405.21022 (LightNet, You Only Scan Once)",
          tiny=dict(d_model=6, num_heads=2, expand_ratio=2, gate_low_rank_dim=3, chunk_size=4,
                    subchunk_size=2))
class LightNet(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, expand_ratio, d_model / H), z (B, H, expand_ratio))."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, expand_ratio: int | None = None,
                 gate_low_rank_dim: int = 128, chunk_size: int = 64, subchunk_size: int = 16,
                 norm_eps: float = 1e-5):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        if d_model % H:
            raise ValueError(f"d_model={d_model} must be a multiple of num_heads={H}")
        K = positive_int("expand_ratio", d_model // H if expand_ratio is None else expand_ratio)
        self.num_heads, self.key_dim, self.value_dim = H, K, d_model // H
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.subchunk_size = positive_int("subchunk_size", subchunk_size)
        self.norm_eps = positive("norm_eps", norm_eps)
        self.qk_proj = Linear(d_model, 2 * H * K, bias=False)
        self.v_proj = Linear(d_model, d_model, bias=False)
        self.g_proj = nn.Sequential(
            Linear(d_model, positive_int("gate_low_rank_dim", gate_low_rank_dim), bias=False),
            Linear(gate_low_rank_dim, d_model, bias=False))
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        self.o_proj = Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        H, K = self.num_heads, self.key_dim
        return (torch.zeros(batch_size, H, K, self.value_dim, device=device, dtype=sdt),
                torch.full((batch_size, H, K), float("-inf"), device=device, dtype=sdt))

    def _gate_weight(self):
        """The output gate's matrix (d_model, d_model): W_g2 W_g1 folded into one when that
        is the cheaper product (2 gate_low_rank_dim >= d_model; a (d, d) row product instead
        of a (d, r) and an (r, d) one), else None (the two products run)."""
        up, down = self.g_proj[1].weight, self.g_proj[0].weight
        return up @ down if 2 * down.shape[0] >= self.d_model else None

    def _inputs(self, x):
        """q, key logits (B, T, H, K), v (B, T, H, V) and the gate's pre-activation
        (B, T, d_model) in the compute dtype: one product of x with the stacked
        [W_qk; W_v; W_g] where the gate's pair folds (`_gate_weight`)."""
        B, T, _ = x.shape
        H, K, d = self.num_heads, self.key_dim, self.d_model
        cdt = compute_dtype(x)
        Wg = self._gate_weight()
        if Wg is None:
            return (*self.op_inputs(x), self.g_proj(x).to(cdt))
        W = torch.cat([self.qk_proj.weight, self.v_proj.weight, Wg])
        qk, v, g = linear(x, W).to(cdt).split([2 * H * K, d, d], -1)
        q, k = qk.reshape(B, T, 2, H, K).unbind(2)
        return F.silu(q), k, v.reshape(B, T, H, self.value_dim), g

    def op_inputs(self, x):
        """q, key logits (B, T, H, K) and v (B, T, H, V) in the compute dtype."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        q, k = self.qk_proj(x).to(cdt).view(B, T, 2, self.num_heads, self.key_dim).unbind(2)
        return F.silu(q), k, self.v_proj(x).to(cdt).view(B, T, self.num_heads, self.value_dim)

    def _output(self, o, gate, x):
        """RMSNorm over all heads times swish of the gate (one C pass each way on the CPU,
        ops.native.head_norm), then W_o. o: (B, T, H, V), gate (B, T, d_model)."""
        o = rms_gate(o.flatten(2), self.norm_weight.to(o.dtype), self.d_model, self.norm_eps,
                     gate.to(o.dtype), "silu")
        return self.o_proj(o.to(x.dtype))

    def op_output(self, o, x):
        """RMSNorm over all heads times swish of the low-rank gate of x, then W_o.
        o: (B, T, H, V)."""
        Wg = self._gate_weight()
        return self._output(o, self.g_proj(x) if Wg is None else linear(x, Wg), x)

    def _forward(self, x, state, mode):
        S, z0 = state
        q, k_logits, v, gate = self._inputs(x)
        k, g, z = additive_gate(k_logits, z0.to(k_logits.dtype))
        kw = dict(scale=1 / math.sqrt(self.key_dim), initial_state=S)
        if mode == "chunk":
            o, S = gated_linear_attention(q, k, v, g, chunk_size=self.chunk_size,
                                          subchunk_size=self.subchunk_size, **kw)
        else:
            o, S = gated_linear_attention_recurrent(q, k, v, g, **kw)
        return self._output(o, gate, x), (S, z.to(S.dtype))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, "
                f"expand_ratio={self.key_dim}, chunk_size={self.chunk_size}")
