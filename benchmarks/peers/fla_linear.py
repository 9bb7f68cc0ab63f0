"""flash-linear-attention's naive PyTorch references as speed baselines for the gated
linear attention layers (`rnnzoo bench --layers gla,...`).

Each baseline runs the rnnzoo layer's own block (projections, gates, norms) with its
recurrence replaced by fla's `naive_recurrent_*` op on the same tensors, so the table
compares the recurrence implementations inside identical layers. fla is imported when a
baseline is built; without it the bench reports the row as skipped.
"""

from __future__ import annotations

import importlib
from unittest import mock

from rnnzoo.bench import register_baseline


def _fla_op(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:  # fla, or the triton it imports, is not installed
        raise ImportError(f"{module} unavailable ({e})") from e


def _gla(q, k, v, g, *, scale, initial_state, bonus=None):
    naive = _fla_op("fla.ops.gla.naive", "naive_recurrent_gla")  # scale fixed at K^-1/2
    return naive(q * (scale * q.shape[-1] ** 0.5), k, v, g, initial_state=initial_state,
                 output_final_state=True)


def _simple_gla(q, k, v, g, *, scale, initial_state, bonus=None):
    naive = _fla_op("fla.ops.simple_gla.naive", "naive_recurrent_simple_gla")
    return naive(q, k, v, g, scale=scale, initial_state=initial_state)


def _linear_attn(q, k, v, g=None, *, scale, initial_state, bonus=None):
    naive = _fla_op("fla.ops.linear_attn.naive", "naive_recurrent_linear_attn")
    return naive(q, k, v, scale=scale, initial_state=initial_state, output_final_state=True)


def _rwkv6(q, k, v, w, *, scale, initial_state, bonus):
    naive = _fla_op("fla.ops.rwkv6.recurrent_naive", "naive_recurrent_rwkv6")
    bh = lambda t: t.transpose(1, 2)  # noqa: E731
    o, S = naive(bh(q), bh(k), bh(v), bh(w), bonus, scale=scale, initial_state=initial_state,
                 output_final_state=True)
    return bh(o), S


def _baseline(layer_name: str, label: str, peer_op):
    @register_baseline(layer_name, label)
    def factory(layer, x):
        _fla_op("fla.ops.gla.naive", "naive_recurrent_gla")  # fail early when fla is absent
        module = importlib.import_module(type(layer).__module__)

        def run():
            with mock.patch.object(module, "gated_linear_attention_recurrent", peer_op):
                return layer(x, mode="sequential")[0]
        return run
    return factory


_baseline("linear_attention", "fla naive_recurrent_linear_attn", _linear_attn)
_baseline("retnet", "fla naive_recurrent_simple_gla", _simple_gla)
_baseline("mamba2", "fla naive_recurrent_simple_gla", _simple_gla)
_baseline("gla", "fla naive_recurrent_gla", _gla)
_baseline("hgrn2", "fla naive_recurrent_gla", _gla)
_baseline("rwkv6", "fla naive_recurrent_rwkv6", _rwkv6)
