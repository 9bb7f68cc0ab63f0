"""flash-linear-attention's (fla-core 0.6.0) naive Titans memory as the speed baseline of
rnnzoo's `titans` (its oracle is tests/layers/test_titans.py): rnnzoo's own block with the
memory done by fla.ops.titans.naive.chunk_titans_linear_ref on the same tensors (fla's memory
is linear, weight-only, with the inner LN: the layer's memory_depth=1, inner_norm=True case;
for other options the ratio is still the cost of one chunked linear memory). A speed baseline
only (fla's LN gradient differs from the exact one outside the case the test checks).
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def titans_with_fla(layer, x):
    """rnnzoo's Titans block on x, memory by fla's naive chunked Titans."""
    *_, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, theta, alpha, eta, _ = layer.op_inputs(x, conv)
    init, w, b = layer.op_args(q.dtype)
    B, T, H, K = q.shape
    o, _ = naive("titans", "chunk_titans_linear_ref")(
        q, k, v, w, b, theta[..., None] / 2, alpha[..., None], eta[..., None],
        eps=layer.norm_eps, chunk_size=layer.chunk_size,
        initial_state=init[0].expand(B, H, K, K).float())
    return layer.op_output(o.to(q.dtype), q, x)


@register_baseline("titans", "fla naive chunk")
def _titans(layer, x):
    naive("titans", "chunk_titans_linear_ref")  # ImportError now: the bench reports "skipped"
    return lambda: titans_with_fla(layer, x)
