"""flash-linear-attention's (fla-core 0.6.0) naive TTT-Linear as the speed baseline of rnnzoo's
`ttt_linear` (its oracle is tests/layers/test_ttt_linear.py): rnnzoo's own block with the inner
loop done by fla.ops.ttt.naive.chunk_ttt_linear_ref on the same tensors, so the bench ratio is
the op's. A speed baseline only: fla takes one rate per step (rnnzoo's tok_t times the step's
own rate lr_t) and reads z + LN(z) where the paper reads q + LN(z).
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def ttt_linear_with_fla(layer, x):
    """rnnzoo's TTT-Linear block on x, inner loop by fla's naive chunked TTT-Linear."""
    *_, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, lr, _ = layer.op_inputs(x, conv)
    tok, init, w, b = layer.op_args(q.dtype)
    B, T, H, K = q.shape
    M = layer.mini_batch_size
    tok_t = tok.repeat((T + M - 1) // M)[:T]
    eta = (tok_t[None, :, None] * lr)[..., None]
    o, _, _ = naive("ttt", "chunk_ttt_linear_ref")(
        q, k, v, w, b, eta, scale=1.0, eps=layer.norm_eps, mini_batch_size=M,
        initial_state=init[0].expand(B, H, K, K).float(),
        initial_state_bias=init[1].expand(B, H, K)[:, :, None].float())
    return layer.op_output(q, o.to(q.dtype), x)


@register_baseline("ttt_linear", "fla naive chunk")
def _ttt_linear(layer, x):
    naive("ttt", "chunk_ttt_linear_ref")  # ImportError now, so the bench table reports "skipped"
    return lambda: ttt_linear_with_fla(layer, x)
