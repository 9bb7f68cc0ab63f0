"""flash-linear-attention's (fla-core 0.6.0) naive DeltaFormer attention as the speed baseline
of rnnzoo's `deltaformer` (and its oracle in tests/layers/test_deltaformer.py): rnnzoo's own
projections with the attention done by fla.ops.deltaformer.naive on the same tensors.

fla.ops.deltaformer's package __init__ imports its Triton kernel, which needs fla.layers (not
part of fla-core 0.6.0): the naive module is loaded from its file, without the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rnnzoo.bench import register_baseline


def naive_deltaformer_attn():
    """fla.ops.deltaformer.naive.naive_deltaformer_attn; ImportError when fla-core is absent."""
    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None:
        raise ImportError("fla-core is not installed (see .ci/install-peers)")
    path = Path(spec.origin).parent / "ops" / "deltaformer" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("_fla_deltaformer_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.naive_deltaformer_attn


def deltaformer_with_fla(layer, x, attn=None):
    """rnnzoo's DeltaFormer block on x, attention by fla's naive reference."""
    q, k, v, beta = layer.op_inputs(x)
    return layer.op_output((attn or naive_deltaformer_attn())(q, k, v, beta), x)


@register_baseline("deltaformer", "fla naive")
def _deltaformer(layer, x):
    attn = naive_deltaformer_attn()  # ImportError now: reported "skipped"
    return lambda: deltaformer_with_fla(layer, x, attn)
