"""flash-linear-attention's (fla-core 0.6.0) naive log-linear attention as the speed baseline
of rnnzoo's `log_linear_mamba2` (and its oracle in tests/layers/test_log_linear_mamba2.py):
rnnzoo's own block (projections, short conv, dt, level weights, gated norm) with the mixing
done by fla.ops.log_linear_attn.naive.naive_log_linear_attn on the same tensors. fla's
reference builds the T x T matrix level by level (from a zero state), and needs
ceil(log2 T) + 1 <= num_levels level weights, so it runs up to T = 2^(num_levels - 1).
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def log_linear_mamba2_with_fla(layer, x):
    """rnnzoo's log-linear Mamba-2 block on x, mixing by fla's naive log-linear attention."""
    if x.shape[1] > 2 ** (layer.num_levels - 1):
        raise ValueError(f"fla's naive log-linear attention needs T <= 2^(num_levels - 1) = "
                         f"{2 ** (layer.num_levels - 1)}, got T={x.shape[1]}")
    _, _, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, g, lam, rest = layer.op_inputs(x, conv)
    o = naive("log_linear_attn", "naive_log_linear_attn")(q, k, v, g, lam, scale=1.0)
    return layer.op_output(o, x, rest)


@register_baseline("log_linear_mamba2", "fla naive", max_length=4096,
                   why="fla's naive form builds T x T matrices, one per level")
def _log_linear_mamba2(layer, x):
    naive("log_linear_attn", "naive_log_linear_attn")  # ImportError now: the table says "skipped"
    return lambda: log_linear_mamba2_with_fla(layer, x)
