"""flash-linear-attention's (fla-core 0.6.0) naive GDN-2 as the speed baseline of rnnzoo's
`gdn2` (and its oracle in tests/layers/test_gdn2.py): rnnzoo's own block with the recurrence
done by fla.ops.gdn2.naive.naive_recurrent_gdn2 on the same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def gdn2_with_fla(layer, x):
    """rnnzoo's GDN-2 block on x, recurrence by fla's naive GDN-2."""
    S, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, g, b, w, _ = layer.op_inputs(x, conv)
    o, _ = naive("gdn2", "naive_recurrent_gdn2")(q, k, v, g, b, w, scale=layer.head_dim ** -0.5,
                                                 initial_state=S)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("gdn2", "fla naive recurrent")
def _gdn2(layer, x):
    naive("gdn2", "naive_recurrent_gdn2")  # ImportError now, so the bench table reports "skipped"
    return lambda: gdn2_with_fla(layer, x)
