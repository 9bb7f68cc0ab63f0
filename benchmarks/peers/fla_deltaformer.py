"""flash-linear-attention's (fla-core 0.6.0) naive DeltaFormer attention as the speed baseline
of rnnzoo's `deltaformer` (and its oracle in tests/layers/test_deltaformer.py): rnnzoo's own
projections with the attention done by fla.ops.deltaformer.naive on the same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def deltaformer_with_fla(layer, x):
    """rnnzoo's DeltaFormer block on x, attention by fla's naive reference."""
    q, k, v, beta = layer.op_inputs(x)
    return layer.op_output(naive("deltaformer", "naive_deltaformer_attn")(q, k, v, beta), x)


@register_baseline("deltaformer", "fla naive")
def _deltaformer(layer, x):
    naive("deltaformer", "naive_deltaformer_attn")  # ImportError now: reported "skipped"
    return lambda: deltaformer_with_fla(layer, x)
