"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2
with Delta Rule", arXiv:2412.06464):

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(K)
    alpha_t = exp(-exp(A_log) softplus(W_a x_t + dt_bias))          (Mamba-2's decay)

with short convolutions + SiLU on q, k, v, L2-normalised q and k, beta = sigmoid(W_b x)
(2 sigmoid with allow_neg_eigval, Grazzi et al. 2025), and the output
y = W_o (RMSNorm(o) * silu(W_g x)); value heads are expand_v = 2 times wider than key heads
as in the paper. `sqrt_eps` normalises q, k as q / sqrt(|q|^2 + 1e-6), fla's l2norm (the
released Gated DeltaNet and Qwen3-Next), instead of q / max(|q|, 1e-6); `num_key_heads` < num_heads shares each q, k head among
num_heads / num_key_heads value heads (Qwen3-Next's grouped value heads). The gate enters the chunkwise form in log space (see ops.chunk.delta).
"""

from __future__ import annotations

from rnnzoo.layers._delta_block import DeltaBlock
from rnnzoo.registry import register


@register("gated_deltanet", family="matrix",
          paper="Yang, Kautz & Hatamizadeh 2025, arXiv:2412.06464",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, expand_v=1, d_conv=2, chunk_size=4))
class GatedDeltaNet(DeltaBlock):
    """x: (B, T, d_model) -> y; state (S (B, H, K, expand_v K), conv state)."""

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 2, d_conv: int = 4, chunk_size: int = 32,
                 allow_neg_eigval: bool = False, norm_eps: float = 1e-5, sqrt_eps: bool = False,
                 num_key_heads: int | None = None):
        super().__init__(d_model, num_heads, head_dim, expand_v, num_householder=1,
                         forget_gate=True, output_gate=True, allow_neg_eigval=allow_neg_eigval,
                         d_conv=d_conv, chunk_size=chunk_size, norm_eps=norm_eps,
                         sqrt_eps=sqrt_eps, num_key_heads=num_key_heads)
