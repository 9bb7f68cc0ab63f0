"""Yaad (Behrouz et al. 2025, "It's All Connected", arXiv:2504.13173, section 5.1): the Miras
block of layers/moneta.py with the Huber attentional bias and the l2 retention (plain
weight decay, phi = identity):

    U_t = alpha_t U_t-1 - eta_t g_t,   g_t = grad l2 (e = M(k_t) - v_t)   if |e|_2 <= delta_t,
                                             delta_t grad l1 (G = delta_t sign(e))  otherwise,
    delta_t = softplus(w_delta . x_t)  (data-dependent threshold)

Below the threshold it is the l2 rule (Titans' memory without momentum); large errors pull
with a bounded force.
"""

from __future__ import annotations

from rnnzoo.layers.moneta import MirasLayer
from rnnzoo.ops.memory import attentional_bias, retention
from rnnzoo.registry import register


@register("yaad", family="matrix", paper="Behrouz et al. 2025, arXiv:2504.13173 (Miras: Yaad)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, memory_depth=2, chunk_size=4, d_conv=2))
class Yaad(MirasLayer):
    __doc__ = MirasLayer.__doc__
    with_delta = True

    def rules(self):
        return attentional_bias("huber"), retention("l2")
