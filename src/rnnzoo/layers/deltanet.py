"""DeltaNet (Schlag, Irie & Schmidhuber 2021, arXiv:2102.11174), in the block and chunkwise
form of Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length", arXiv:2406.06484:

    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(K)

with short causal convolutions + SiLU on q, k, v, L2-normalised q and k, beta = sigmoid(W_b x)
and a per-head RMSNorm before the output projection (see `_delta_block`). allow_neg_eigval
makes beta = 2 sigmoid(W_b x), so I - beta k k^T can reflect (Grazzi et al. 2025,
arXiv:2411.12537). Modes: `sequential` (the loop), `chunk` (the UT-transform chunkwise form).
"""

from __future__ import annotations

from rnnzoo.layers._delta_block import DeltaBlock
from rnnzoo.registry import register


@register("deltanet", family="matrix",
          paper="Schlag et al. 2021, arXiv:2102.11174; Yang et al. 2024, arXiv:2406.06484",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2, chunk_size=4))
class DeltaNet(DeltaBlock):
    """x: (B, T, d_model) -> y; state (S (B, H, K, K), conv state). Options: num_heads,
    head_dim (default d_model // num_heads), expand_v, d_conv, chunk_size, allow_neg_eigval,
    output_gate (off, as in the paper)."""

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 1, d_conv: int = 4, chunk_size: int = 32,
                 allow_neg_eigval: bool = False, output_gate: bool = False, norm_eps: float = 1e-5):
        super().__init__(d_model, num_heads, head_dim, expand_v, num_householder=1,
                         forget_gate=False, output_gate=output_gate,
                         allow_neg_eigval=allow_neg_eigval, d_conv=d_conv,
                         chunk_size=chunk_size, norm_eps=norm_eps)
