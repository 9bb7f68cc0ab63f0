"""flash-linear-attention's (fla-core 0.6.0) naive momentum delta rule as the speed baseline of
rnnzoo's `momentum_deltanet` (and its oracle in tests/layers/test_momentum_deltanet.py):
rnnzoo's own block with the recurrence done by
fla.ops.momentum_delta_rule.naive.recurrent_momentum_delta_rule_ref on the same tensors.
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline

_REF = ("momentum_delta_rule", "recurrent_momentum_delta_rule_ref")


def momentum_deltanet_with_fla(layer, x):
    """rnnzoo's Momentum DeltaNet block on x, recurrence by fla's naive reference."""
    S, M, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, la, lm, beta, eta, _ = layer.op_inputs(x, conv)
    o, _ = naive(*_REF)(q, k, v, la, lm, k, beta, eta, scale=layer.head_dim ** -0.5,
                        initial_S=S, initial_M=M)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("momentum_deltanet", "fla naive recurrent")
def _momentum_deltanet(layer, x):
    naive(*_REF)  # ImportError now, so the bench table reports "skipped"
    return lambda: momentum_deltanet_with_fla(layer, x)
