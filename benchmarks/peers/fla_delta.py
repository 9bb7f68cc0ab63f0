"""flash-linear-attention's (fla-core 0.6.0) naive PyTorch references of the delta-rule ops,
as speed baselines for rnnzoo's delta layers and as oracles (tests/ops/test_chunk_delta.py).

fla's Triton kernels do not run on a CPU, but its `naive` modules do (importing fla needs the
triton wheel installed, not a GPU; see .ci/install-peers). Each baseline runs rnnzoo's own
block (projections, short convs, norms) with the recurrence done by fla's reference on the
same tensors, so the bench ratio is the op's:

    deltanet        fla.ops.delta_rule.naive.delta_rule_recurrence
    gated_deltanet  fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule
    deltaproduct    fla.ops.gated_delta_product.naive.naive_recurrent_gated_delta_product
    rwkv7           fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence
"""

from __future__ import annotations

import importlib

from rnnzoo.bench import register_baseline


def naive(module: str, name: str):
    """fla.ops.<module>.naive.<name>; ImportError when fla-core is not installed."""
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}.naive"), name)
    except ImportError as e:
        raise ImportError(f"fla-core is not installed (see .ci/install-peers): {e}") from e


def _bhtd(t):
    return t.transpose(1, 2).contiguous()


def delta_block_with_fla(layer, x):
    """rnnzoo's DeltaNet / Gated DeltaNet / DeltaProduct block on x, recurrence by fla."""
    S, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, beta, g, _ = layer.op_inputs(x, conv)
    scale = layer.head_dim ** -0.5
    if layer.num_householder > 1:
        f = naive("gated_delta_product", "naive_recurrent_gated_delta_product")
        o, _ = f(q, k.flatten(1, 2), v.flatten(1, 2), g, beta.flatten(1, 2), scale=scale,
                 initial_state=S, output_final_state=True, num_householder=layer.num_householder)
    elif g is not None:
        f = naive("gated_delta_rule", "naive_recurrent_gated_delta_rule")
        o, _ = f(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], g, scale=scale, initial_state=S,
                 output_final_state=True)
    else:  # delta_rule_recurrence takes (B, H, T, D) and always scales by K^-0.5
        f = naive("delta_rule", "delta_rule_recurrence")
        o, _ = f(_bhtd(q), _bhtd(k[:, :, 0]), _bhtd(v[:, :, 0]), _bhtd(beta[:, :, 0]),
                 initial_state=S)
        o = _bhtd(o)
    return layer.op_output(o, x)


def rwkv7_with_fla(layer, x):
    """rnnzoo's RWKV-7 block on x, recurrence by fla's DPLR reference (which scales r by
    K^-0.5; RWKV-7 uses scale 1, so r is passed multiplied by K^0.5)."""
    S, x_last = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    r, w, k, v, a, b, g, _ = layer.op_inputs(x, x_last)
    f = naive("generalized_delta_rule.dplr", "dplr_recurrence")
    o, _ = f(_bhtd(r * layer.head_dim ** 0.5), _bhtd(k), _bhtd(v), _bhtd(a), _bhtd(b), _bhtd(w),
             initial_state=S)
    return layer.op_output(_bhtd(o), r, k, v, g, x)


def _factory(forward, module, name):
    def factory(layer, x):
        naive(module, name)  # ImportError now, so the bench table reports "skipped"
        return lambda: forward(layer, x)
    return factory


for _name in ("deltanet", "gated_deltanet", "deltaproduct"):
    register_baseline(_name, "fla naive recurrent")(
        _factory(delta_block_with_fla, "delta_rule", "delta_rule_recurrence"))
register_baseline("rwkv7", "fla naive recurrent")(
    _factory(rwkv7_with_fla, "generalized_delta_rule.dplr", "dplr_recurrence"))
