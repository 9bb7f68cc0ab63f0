"""flash-linear-attention's (fla-core 0.6.0) naive simple-GLA recurrence (a scalar decay per
head, which lightning attention is) as the speed baseline of rnnzoo's `lightning_attention`:
rnnzoo's own block with the recurrence done by fla.ops.simple_gla.naive on the same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def lightning_with_fla(layer, x):
    """rnnzoo's lightning-attention block on x, recurrence by fla's naive simple GLA."""
    q, k, v, g = layer.op_inputs(x)
    o, _ = naive("simple_gla", "naive_recurrent_simple_gla")(q, k, v, g, scale=1.0)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("lightning_attention", "fla naive recurrent")
def _lightning(layer, x):
    naive("simple_gla", "naive_recurrent_simple_gla")  # ImportError now: reported "skipped"
    return lambda: lightning_with_fla(layer, x)
