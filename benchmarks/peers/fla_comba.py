"""flash-linear-attention's (fla-core 0.6.0) naive Comba as the speed baseline of rnnzoo's
`comba` (and its oracle in tests/layers/test_comba.py): rnnzoo's own block (projections, short
conv, gates, norm) with the recurrence done by fla.ops.comba.naive.naive_recurrent_comba on
the same tensors, so the bench ratio is the op's.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def comba_with_fla(layer, x):
    """rnnzoo's Comba block on x, recurrence by fla's naive Comba."""
    S, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, p, v, g, beta, _ = layer.op_inputs(x, conv)
    o, _ = naive("comba", "naive_recurrent_comba")(q, k, v, p, beta, g,
                                                   scale=layer.head_dim ** -0.5, initial_state=S)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("comba", "fla naive recurrent")
def _comba(layer, x):
    naive("comba", "naive_recurrent_comba")  # ImportError now, so the bench table reports "skipped"
    return lambda: comba_with_fla(layer, x)
