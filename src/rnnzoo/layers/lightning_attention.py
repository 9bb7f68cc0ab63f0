"""Lightning attention, the linear attention of MiniMax-01 (MiniMax 2025, arXiv:2501.08313;
the decayed linear attention of TransNormerLLM / Lightning Attention-2, Qin et al. 2024,
arXiv:2401.04658): a linear attention whose decay is fixed, one rate per head.

    q, k, v = silu(W_qkv x)                                     (per head, head_dim each)
    S_t     = lambda_h S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t   (no 1/sqrt(d) scale)
    lambda_h = exp(-s_h),  s_h = 2^(-8 (h + 1) / H) (1 - l / (L - 1) + 1e-5)
    y       = W_o [RMSNorm(o) * sigmoid(W_g x)]                 (RMSNorm over all heads)

The rates s_h are ALiBi's slopes, scaled down with depth: layer l of L decays fastest at the
bottom (l = 0) and barely at the top; `layer_idx` and `num_layers` say where this layer sits
(a single layer, num_layers = 1, keeps the slopes unscaled). They are fixed, not trained.
MiniMax's released code divides by L - 1 + 1e-5 instead: `depth_eps=1e-5` (its checkpoints).

It is gated linear attention with a scalar decay per head: the ops of ops.chunk.linear.
State: S (B, H, head_dim, head_dim). Modes: `sequential` (the recurrent loop), `chunk` and
`parallel` (the masked quadratic form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops.chunk.linear import (
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    ssd,
)
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def minimax_slopes(num_heads: int, layer_idx: int = 0, num_layers: int = 1, *,
                   device=None, dtype=torch.float64, depth_eps: float = 0.0) -> torch.Tensor:
    """s_h = 2^(-8 (h + 1) / H) (1 - l / (L - 1 + depth_eps) + 1e-5), h = 0..H-1: (H,)."""
    h = torch.arange(1, num_heads + 1, device=device, dtype=dtype)
    depth = 1.0 if num_layers == 1 else 1 - layer_idx / (num_layers - 1 + depth_eps) + 1e-5
    return 2.0 ** (-8 * h / num_heads) * depth


@register("lightning_attention", family="matrix",
          paper="MiniMax 2025, arXiv:2501.08313; Qin et al. 2024, arXiv:2401.04658",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, chunk_size=4))
class LightningAttention(RecurrentLayer):
    """x: (B, T, d_model) -> y; state S: (B, num_heads, head_dim, head_dim)."""

    modes = ("sequential", "chunk", "parallel")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 layer_idx: int = 0, num_layers: int = 1, chunk_size: int = 64,
                 norm_eps: float = 1e-6, depth_eps: float = 0.0):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        D = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        positive_int("num_layers", num_layers)
        if not isinstance(layer_idx, int) or isinstance(layer_idx, bool) \
                or not 0 <= layer_idx < num_layers:
            raise ValueError(f"layer_idx must be an int in [0, num_layers={num_layers}), "
                             f"got {layer_idx!r}")
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.num_heads, self.head_dim, self.norm_eps = H, D, positive("norm_eps", norm_eps)
        self.layer_idx, self.num_layers = layer_idx, num_layers
        self.depth_eps = positive("depth_eps", depth_eps, allow_zero=True)
        self.qkv_proj = Linear(d_model, 3 * H * D, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(H * D))
        self.g_proj = Linear(d_model, H * D, bias=False)
        self.o_proj = Linear(H * D, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim,
                           device=device, dtype=state_dtype(dtype))

    def op_inputs(self, x):
        """q, k, v: (B, T, H, head_dim) and the log-decay (B, T, H), in the compute dtype."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        q, k, v = F.silu(self.qkv_proj(x).to(cdt)).view(B, T, 3, self.num_heads, -1).unbind(2)
        slopes = minimax_slopes(self.num_heads, self.layer_idx, self.num_layers, device=x.device,
                                dtype=cdt, depth_eps=self.depth_eps)
        g = (-slopes).expand(B, T, self.num_heads)
        return q, k, v, g

    def op_output(self, o, x):
        """RMSNorm over all heads times the sigmoid gate, then W_o. o: (B, T, H, head_dim)."""
        o = rms_gate(o.flatten(2), self.norm_weight.to(o.dtype), o.shape[2] * o.shape[3],
                     self.norm_eps, self.g_proj(x).to(o.dtype), "sigmoid")  # ops.native.head_norm
        return self.o_proj(o.to(x.dtype))

    def lion_inputs(self, x):
        """The op's q, k, v, log-decay and scale, for bidirectional=True (layers/bidirectional.py)."""
        return (*self.op_inputs(x), 1.0)

    lion_output = op_output

    def _forward(self, x, state, mode):
        q, k, v, g = self.op_inputs(x)
        if mode == "sequential":
            o, state = gated_linear_attention_recurrent(q, k, v, g, scale=1.0, initial_state=state)
        elif mode == "chunk":  # the ops keep a non-finite step out of earlier outputs
            # ssd: one group per head; on the CPU the C recurrence (ops.native.ssd_scan)
            o, state = ssd(q, k, v, g, scale=1.0, initial_state=state, chunk_size=self.chunk_size)
        else:
            o, state = gated_linear_attention_parallel(q, k, v, g, scale=1.0,
                                                       initial_state=state)
        return self.op_output(o, x), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"layer_idx={self.layer_idx}, num_layers={self.num_layers}, "
                f"chunk_size={self.chunk_size}")
