"""flash-linear-attention's (fla-core 0.6.0) naive Based and ReBased (the masked kernel
matrices) as the speed baselines of rnnzoo's `based` and `rebased` (and their oracles in
tests/layers/test_based.py, test_rebased.py): rnnzoo's own block (projections, ReBased's
normalised affine map) with the attention done by fla.ops.{based,rebased}.naive on the same
tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def based_with_fla(layer, x):
    """rnnzoo's Based block on x, attention by fla's naive parallel Based."""
    q, k, v = (t.transpose(1, 2) for t in layer.op_inputs(x))
    o = naive("based", "naive_parallel_based")(q, k, v)
    return layer.op_output(o.transpose(1, 2), x)


@register_baseline("based", "fla naive parallel")
def _based(layer, x):
    naive("based", "naive_parallel_based")  # ImportError now: reported "skipped"
    return lambda: based_with_fla(layer, x)


def rebased_with_fla(layer, x):
    """rnnzoo's ReBased block on x (its normalised affine map first), attention by fla's
    naive parallel ReBased."""
    q, k, v = layer.op_inputs(x)
    q, k, v = (t.transpose(1, 2) for t in (layer.affine(q), layer.affine(k), v))
    o = naive("rebased", "naive_parallel_rebased")(q, k, v)
    return layer.op_output(o.transpose(1, 2), x)


@register_baseline("rebased", "fla naive parallel")
def _rebased(layer, x):
    naive("rebased", "naive_parallel_rebased")  # ImportError now: reported "skipped"
    return lambda: rebased_with_fla(layer, x)
