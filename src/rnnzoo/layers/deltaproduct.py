"""Gated DeltaProduct (Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear
RNNs via Householder Products", arXiv:2502.10297): n_h delta-rule (generalised Householder)
steps per token, each with its own key, value and beta,

    S <- alpha_t S;  for j = 1..n_h: S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T
    o_t = S^T q_t / sqrt(K)

so the transition of one token is a product of n_h Householder-like matrices. The block is
Gated DeltaNet's (short convs + SiLU, L2-normalised q, k, output gate + RMSNorm);
forget_gate=False gives the ungated DeltaProduct, allow_neg_eigval beta in (0, 2).
"""

from __future__ import annotations

from rnnzoo.layers._delta_block import DeltaBlock
from rnnzoo.registry import register


@register("deltaproduct", family="matrix", paper="Siems et al. 2025, arXiv:2502.10297",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, num_householder=2, expand_v=1,
                    d_conv=2, chunk_size=2))
class DeltaProduct(DeltaBlock):
    """x: (B, T, d_model) -> y; state (S (B, H, K, expand_v K), conv state). n_h is
    `num_householder` (default 2)."""

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 num_householder: int = 2, expand_v: int = 2, d_conv: int = 4,
                 chunk_size: int = 32, forget_gate: bool = True, allow_neg_eigval: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__(d_model, num_heads, head_dim, expand_v, num_householder=num_householder,
                         forget_gate=forget_gate, output_gate=True,
                         allow_neg_eigval=allow_neg_eigval, d_conv=d_conv,
                         chunk_size=chunk_size, norm_eps=norm_eps)
