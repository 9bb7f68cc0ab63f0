"""flash-linear-attention's (fla-core 0.6.0) naive forgetting attention as the speed baseline
of rnnzoo's `forgetting_attention` (and its oracle in tests/layers/test_forgetting_attention.py):
rnnzoo's own block (projections, qk norm, output gate) with the attention done by
fla.ops.forgetting_attn.naive.naive_forgetting_attn on the same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def forgetting_attention_with_fla(layer, x):
    """rnnzoo's FoX block on x, attention by fla's naive forgetting attention."""
    q, k, v, g = layer.op_inputs(x)
    o = naive("forgetting_attn", "naive_forgetting_attn")(q, k, v, g, scale=layer.head_dim ** -0.5,
                                                         window_size=layer.window)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("forgetting_attention", "fla naive")
def _forgetting_attention(layer, x):
    naive("forgetting_attn", "naive_forgetting_attn")  # ImportError now: reported "skipped"
    return lambda: forgetting_attention_with_fla(layer, x)
