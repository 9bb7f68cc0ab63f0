"""flash-linear-attention's (fla-core 0.6.0) naive KDA as the speed baseline of rnnzoo's `kda`
(and its oracle in tests/ops/test_kda.py): rnnzoo's own block (projections, short conv,
gates, norm) with the recurrence done by fla.ops.kda.naive.naive_recurrent_kda on the same
tensors, so the bench ratio is the op's.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def kda_with_fla(layer, x):
    """rnnzoo's KDA block on x, recurrence by fla's naive KDA."""
    S, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, g, beta, _ = layer.op_inputs(x, conv)
    o, _ = naive("kda", "naive_recurrent_kda")(q, k, v, g, beta, scale=layer.head_dim ** -0.5,
                                               initial_state=S)
    return layer.op_output(o, x)


@register_baseline("kda", "fla naive recurrent")
def _kda(layer, x):
    naive("kda", "naive_recurrent_kda")  # ImportError now, so the bench table reports "skipped"
    return lambda: kda_with_fla(layer, x)
