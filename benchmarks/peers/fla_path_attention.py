"""flash-linear-attention's (fla-core 0.6.0) naive PaTH attention as the speed baseline of
rnnzoo's `path_attention` (and its oracle in tests/layers/test_path_attention.py): rnnzoo's
own projections with the attention done by fla.ops.path_attn.naive on the same tensors.
"""

from __future__ import annotations

import torch

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def path_attention_with_fla(layer, x):
    """rnnzoo's PaTH block on x, attention by fla's naive reference (no forget gate)."""
    q, k, v, w, beta = layer.op_inputs(x)
    o = naive("path_attn", "naive_path_attn")(q, k, v, w, beta, torch.zeros_like(beta),
                                              scale=layer.head_dim ** -0.5,
                                              chunk_size=layer.chunk_size)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("path_attention", "fla naive")
def _path_attention(layer, x):
    naive("path_attn", "naive_path_attn")  # ImportError now: reported "skipped"
    return lambda: path_attention_with_fla(layer, x)
