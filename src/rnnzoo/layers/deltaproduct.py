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

import torch

from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers._delta_block import DeltaBlock
from rnnzoo.ops import flop_count, sequence_parallel
from rnnzoo.ops.chunk.delta import delta_product, product_plain
from rnnzoo.ops.native import delta_scan as native_delta
from rnnzoo.registry import register


def _product(q, k, v, beta, g, S0, chunk_size):
    """delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=chunk_size) (shapes as
    there: k (B, T, n_h, H, K), ...; returns o (B, T, H, V), S_T), whose CPU path (the C
    recurrence, ops.native.delta_scan) runs here without clean_inputs' sums over q, k, v,
    beta and g first (~1.7 ms a call at B=16 T=512: 28 MB read): the recurrence runs, and
    where its final state is not finite, delta_product runs again with its marks
    (ops.finite). That catches what the sums catch: a NaN or inf key, value, beta or gate
    enters the state, and there is no division in the recurrence to take it out again
    (0 * inf is NaN), so S_T holds it (a gate of -inf, exp(g) = 0, empties the state
    instead, finite as in the reference loop). A non-finite query reaches its own output
    only, as the marks would set it. So outputs before a non-finite step equal the clean
    run's either way (docs/design.md); the results are delta_product's own. Inside
    bench.layer_flops' counting this path runs too (ops.flop_count.native; the kernel books
    delta_scan.flops), as the CPU timing takes it."""
    B, T, n_h, H, K = k.shape
    lib = None
    if (not sequence_parallel.active() and k.dim() == 5 and q.shape == (B, T, H, K)
            and flop_count.native(q, k, v, beta, g, S0)):
        lib = native_delta.load()
    if lib is None:
        return delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=chunk_size)
    V = v.shape[-1]
    S = (q.new_zeros(B, H, K, V) if S0 is None else S0).to(compute_dtype(q))
    o, ST = native_delta.delta(lib, q, k.reshape(B, T * n_h, H, K), v.reshape(B, T * n_h, H, V),
                               beta.reshape(B, T * n_h, H),
                               beta.new_zeros(B, T, H) if g is None else g, S, K ** -0.5, n_h,
                               product_plain(K ** -0.5, chunk_size))
    if not bool(torch.isfinite(ST).all()):
        return delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=chunk_size)
    return o.to(q.dtype), ST


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

    def _forward(self, x, state, mode):
        if mode != "chunk" or self.num_householder == 1:
            return super()._forward(x, state, mode)
        S, conv_state = state
        q, k, v, beta, g, conv_state = self.op_inputs(x, conv_state)
        o, S = _product(q, k, v, beta, g, S, self.chunk_size)
        return self.op_output(o, x), (S, conv_state)
