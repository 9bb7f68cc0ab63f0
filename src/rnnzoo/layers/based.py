"""Based (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff", arXiv:2402.18668): linear attention through the second-order
Taylor feature map of exp.

    q, k = W_q x, W_k x        (per head, feature_dim wide: the small projected dimension d)
    v    = W_v x               (per head, head_dim wide)
    phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]
           so phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)  ~ exp(q.k / sqrt(d))
    o_t  = sum_{s<=t} phi(q_t).phi(k_s) v_s / (sum_{s<=t} phi(q_t).phi(k_s) + eps)
    y    = W_o o

This is the paper's linear-attention layer; the paper's model interleaves it with gated
short convolutions and sliding-window softmax attention as separate layers (`attention`
with `window` is that one), so it carries neither.

State: S (B, H, F, head_dim + 1), F = 1 + d + d^2, the features' sum with the values and
(the last column) the normaliser (ops.feature_maps). Modes: `sequential` (the recurrent
loop), `chunk` (the kernel matrix inside chunks, the packed features across them:
ops.feature_maps) and `parallel` (the masked kernel matrix 1 + s + s^2 / 2).
"""

from __future__ import annotations

import torch

from rnnzoo.checks import positive_int, real
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops import sequence_parallel
from rnnzoo.ops.feature_maps import feature_attention, feature_size, features, poly_lib
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("based", family="matrix", paper="Arora et al. 2024, arXiv:2402.18668 (Based)",
          tiny=dict(d_model=4, num_heads=2, feature_dim=2, chunk_size=4))
class Based(RecurrentLayer):
    """x: (B, T, d_model) -> y; state S: (B, num_heads, F, head_dim + 1)."""

    modes = ("sequential", "chunk", "parallel")
    feature_map = "taylor"

    def __init__(self, d_model: int, num_heads: int = 4, feature_dim: int = 16,
                 head_dim: int | None = None, chunk_size: int = 64, eps: float = 1e-12):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        self.feature_dim = positive_int("feature_dim", feature_dim)
        self.head_dim = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.num_heads, self.eps = H, real("eps", eps, lo=0)
        self.q_proj = Linear(d_model, H * feature_dim, bias=False)
        self.k_proj = Linear(d_model, H * feature_dim, bias=False)
        self.v_proj = Linear(d_model, H * self.head_dim, bias=False)
        self.o_proj = Linear(H * self.head_dim, d_model, bias=False)

    def auto_mode(self, x: torch.Tensor) -> str:
        """`parallel` where its C kernel runs (ops/native/poly_attn.c) and T <= 768: the kernel
        matrix by causal tiles costs about T (d + W) multiply-adds a token each way, under the
        chunk form's packed products (F' = 153 / 136 wide, C = 64: small products at a third of
        the matmul peak) up to there (measured, based fwd+bwd at 1 thread: T = 256 49.6 vs
        92.0 ms, 1024 325.6 vs 318.3); else `chunk`, and always `chunk` without x (the
        sequence-parallel check asks auto_mode(None)) or under sequence parallelism (only
        the chunk form joins the ranks' LASP-2 exchange: a rank's own kernel matrix would
        miss the earlier ranks' tokens)."""
        if (x is not None and not sequence_parallel.active() and x.shape[1] <= 768
                and poly_lib(x) is not None):
            return "parallel"
        return "chunk"

    def init_state(self, batch_size, device=None, dtype=None):
        F = feature_size(self.feature_map, self.feature_dim)
        return torch.zeros(batch_size, self.num_heads, F, self.head_dim + 1, device=device,
                           dtype=state_dtype(dtype))

    def feature_inputs(self, q, k):
        """q, k (B, T, H, d) -> the inputs of the feature map: both scaled by d^(-1/4)."""
        s = self.feature_dim ** -0.25
        return q * s, k * s

    def op_inputs(self, x):
        """q, k: (B, T, H, feature_dim) (before the feature map's scaling), v: (B, T, H,
        head_dim), in the compute dtype."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        q = self.q_proj(x).to(cdt).view(B, T, self.num_heads, self.feature_dim)
        k = self.k_proj(x).to(cdt).view(B, T, self.num_heads, self.feature_dim)
        return q, k, self.v_proj(x).to(cdt).view(B, T, self.num_heads, self.head_dim)

    def op_output(self, o, x):
        return self.o_proj(o.flatten(2).to(x.dtype))

    def lion_inputs(self, x):
        """phi(q), phi(k) (B, T, H, F), [v, 1] (B, T, H, head_dim + 1) (the last column reads
        the normaliser), no decay, scale 1: a linear attention on the features, bidirectional
        by layers/bidirectional.py (the kernel matrix phi(q_i) . phi(k_j) over all j)."""
        q, k, v = self.op_inputs(x)
        q, k = (features(t, self.feature_map) for t in self.feature_inputs(q, k))
        return q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), None, 1.0

    def lion_output(self, o, x):
        """o (B, T, H, head_dim + 1): the numerator over the normaliser (+ eps), projected."""
        return self.op_output((o[..., :-1] / (o[..., -1:] + self.eps)).to(compute_dtype(x)), x)

    def _forward(self, x, state, mode):
        q, k, v = self.op_inputs(x)
        q, k = self.feature_inputs(q, k)
        o, state = feature_attention(q, k, v, self.feature_map, mode=mode, initial_state=state,
                                     eps=self.eps, chunk_size=self.chunk_size)
        return self.op_output(o, x), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, "
                f"feature_dim={self.feature_dim}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}")
