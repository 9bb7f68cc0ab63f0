"""flash-linear-attention's (fla-core 0.6.0) naive stick-breaking attention as the speed
baseline of rnnzoo's `stickbreaking_attention` (and its oracle in
tests/layers/test_stickbreaking_attention.py): rnnzoo's own projections with the attention
done by fla.ops.stickbreaking_attn.naive on the same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def stickbreaking_with_fla(layer, x):
    """rnnzoo's stick-breaking block on x, attention by fla's naive reference."""
    q, k, v = layer.op_inputs(x)
    o, _ = naive("stickbreaking_attn", "naive_stickbreaking_attn")(
        q, k, v, attend_current=layer.attend_current)
    return layer.op_output(o, x)


@register_baseline("stickbreaking_attention", "fla naive")
def _stickbreaking(layer, x):
    naive("stickbreaking_attn", "naive_stickbreaking_attn")  # ImportError now: "skipped"
    return lambda: stickbreaking_with_fla(layer, x)
