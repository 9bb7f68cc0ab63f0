"""flash-linear-attention's (fla-core 0.6.0) naive recurrent GSA as the speed baseline of
rnnzoo's `gsa` (and its oracle in tests/layers/test_gsa.py): rnnzoo's own block (projections,
gates, norm) with the two slot passes done by fla.ops.gsa.naive.naive_recurrent_gsa on the
same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def gsa_with_fla(layer, x):
    """rnnzoo's GSA block on x, slot passes by fla's naive recurrent GSA."""
    q, k, v, s, g = layer.op_inputs(x)
    o, _ = naive("gsa", "naive_recurrent_gsa")(q, k, v, s, g)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("gsa", "fla naive recurrent")
def _gsa(layer, x):
    naive("gsa", "naive_recurrent_gsa")  # ImportError now: reported "skipped"
    return lambda: gsa_with_fla(layer, x)
