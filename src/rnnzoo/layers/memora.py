"""Memora (Behrouz et al. 2025, "It's All Connected", arXiv:2504.13173, section 5.1): the
Miras block of layers/moneta.py with the l2 attentional bias and the KL-divergence retention,

    W_t = softmax(alpha_t log W_t-1 - eta_t grad l2(W'; k_t, v_t))       (over each row)

kept as the logits U (softmax is blind to a shift along its axis, so U_t = alpha_t U_t-1 -
eta_t g_t and W_t = softmax(U_init + U_t)): every row of every memory weight stays on the
probability simplex.
"""

from __future__ import annotations

from rnnzoo.layers.moneta import MirasLayer
from rnnzoo.ops.memory import attentional_bias, retention
from rnnzoo.registry import register


@register("memora", family="matrix", paper="Behrouz et al. 2025, arXiv:2504.13173 (Miras: Memora)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, memory_depth=2, chunk_size=4, d_conv=2))
class Memora(MirasLayer):
    __doc__ = MirasLayer.__doc__

    def rules(self):
        return attentional_bias("l2"), retention("kl")
