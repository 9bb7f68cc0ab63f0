"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236).

Causal attention with the similarity phi(q)^T phi(k), phi(x) = elu(x) + 1 (eq. 7):

    S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t)
    o_t = S_t^T phi(q_t) / (z_t^T phi(q_t))          (eqs. 18-20)

The normaliser z rides along as one more value column (v' = [v, 1]), so the state
is one tensor (B, H, K, V + 1) = [S | z], and every mode is `gated_linear_attention`
without decay: `sequential` (the loop), `chunk`, `parallel` (the masked quadratic form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops.chunk.linear import (
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    ssd,
)
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("linear_attention", family="matrix", paper="Katharopoulos et al. 2020, arXiv:2006.16236",
          tiny=dict(d_model=8, num_heads=2, chunk_size=4))
class LinearAttention(RecurrentLayer):
    """x: (B, T, d_model) -> y; state [S | z]: (B, num_heads, head_dim, head_dim + 1)."""

    modes = ("sequential", "chunk", "parallel")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 chunk_size: int = 64, eps: float = 1e-6):
        super().__init__(d_model)
        positive_int("num_heads", num_heads)
        head_dim = d_model // num_heads if head_dim is None else head_dim
        positive_int("head_dim", head_dim)
        positive_int("chunk_size", chunk_size)
        self.num_heads, self.head_dim, self.chunk_size = num_heads, head_dim, chunk_size
        self.eps = positive("eps", eps)
        self.qkv = Linear(d_model, 3 * num_heads * head_dim, bias=False)
        self.out_proj = Linear(num_heads * head_dim, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        H, D = self.num_heads, self.head_dim
        return torch.zeros(batch_size, H, D, D + 1, device=device, dtype=state_dtype(dtype))

    def lion_inputs(self, x):
        """q, k, v (with the ones column), no decay, scale 1: the op's inputs (also those of
        bidirectional=True, layers/bidirectional.py)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)  # last column accumulates z
        return q, k, v, None, 1.0

    def lion_output(self, o, x):
        """The normalised read-out o / z, then the output projection."""
        o = o[..., :-1] / (o[..., -1:] + self.eps)
        return self.out_proj(o.flatten(2))

    def _forward(self, x, state, mode):
        q, k, v, _, _ = self.lion_inputs(x)
        if mode == "chunk":  # ssd with no decay, one group per head: on the CPU the C
            # recurrence (ops.native.ssd_scan)
            o, state = ssd(q, k, v, q.new_zeros(q.shape[:3]), scale=1.0, initial_state=state,
                           chunk_size=self.chunk_size)
        elif mode == "parallel":
            o, state = gated_linear_attention_parallel(q, k, v, scale=1.0, initial_state=state)
        else:
            o, state = gated_linear_attention_recurrent(q, k, v, scale=1.0, initial_state=state)
        return self.lion_output(o, x), state
