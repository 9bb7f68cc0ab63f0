"""ReBased (Aksenov et al. 2024, "Linear Transformers with Learnable Kernel Functions are
Better In-Context Models", arXiv:2402.10644): Based with a learnable quadratic kernel.

    q, k = W_q x, W_k x                     (per head, feature_dim wide: d)
    q', k' = gamma * norm(q) + beta, gamma * norm(k) + beta     (norm: LayerNorm without
                                             affine, over d; gamma, beta learnable, (d,))
    phi(x) = vec(x x^T) / sqrt(d)           so phi(q') . phi(k') = (q'.k')^2 / d
    o_t  = sum_{s<=t} (q'_t.k'_s)^2 v_s / (sum_{s<=t} (q'_t.k'_s)^2 + eps),   y = W_o o

Dropping Based's constant and linear terms and normalising q and k first are the paper's
changes; `normalize`, `use_gamma`, `use_beta` switch them off one by one (its ablations).
State: S (B, H, d^2, head_dim + 1) as Based's. Modes as Based's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, real
from rnnzoo.layers.based import Based
from rnnzoo.registry import register


@register("rebased", family="matrix", paper="Aksenov et al. 2024, arXiv:2402.10644 (ReBased)",
          tiny=dict(d_model=4, num_heads=2, feature_dim=2, chunk_size=4))
class ReBased(Based):
    """x: (B, T, d_model) -> y; state S: (B, num_heads, feature_dim^2, head_dim + 1)."""

    feature_map = "square"

    def __init__(self, d_model: int, num_heads: int = 4, feature_dim: int = 16,
                 head_dim: int | None = None, chunk_size: int = 64, eps: float = 1e-12,
                 normalize: bool = True, use_gamma: bool = True, use_beta: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__(d_model, num_heads, feature_dim, head_dim, chunk_size, eps)
        self.normalize = flag("normalize", normalize)
        self.norm_eps = real("norm_eps", norm_eps, lo=0)
        self.gamma = nn.Parameter(torch.ones(feature_dim)) if flag("use_gamma", use_gamma) \
            else None
        self.beta = nn.Parameter(torch.zeros(feature_dim)) if flag("use_beta", use_beta) \
            else None

    def affine(self, x):
        """gamma * norm(x) + beta over the last dim (as the flags say)."""
        if self.normalize:
            x = F.layer_norm(x, (x.shape[-1],), eps=self.norm_eps)
        if self.gamma is not None:
            x = x * self.gamma.to(x.dtype)
        if self.beta is not None:
            x = x + self.beta.to(x.dtype)
        return x

    def feature_inputs(self, q, k):
        return super().feature_inputs(self.affine(q), self.affine(k))

    # Based's, declared again so that layers/base.py gives this constructor `bidirectional` too
    lion_inputs = Based.lion_inputs

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, normalize={self.normalize}, "
                f"use_gamma={self.gamma is not None}, use_beta={self.beta is not None}")
