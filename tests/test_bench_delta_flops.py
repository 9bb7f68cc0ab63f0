"""bench.layer_flops counts the CPU path of the delta-rule layers whose ops run a C recurrence
there (ops.flop_count.native in ops.chunk.delta's delta_rule and rwkv7, ops.chunk.kda,
ops.erase_delta, ops.momentum_delta; the kernels book their products), not the ops' chunk
forms, which the CPU timing never runs.

Each case checks (1) what the kernels booked inside layer_flops, against the count written
out here from the shapes (per (batch, head) pair and state entry, 2 FLOPs a multiply-add),
and (2) the whole count: the layer's chunk-form count (torch's products, no counting) less
the op's chunk form at the very inputs the layer gave it, plus (1)."""

from __future__ import annotations

import pytest

from _booked_flops import check_booked

B, T, d, H, K = 2, 37, 16, 2, 4
P = B * H  # (batch, head) pairs


def _delta(P, T, K, V):
    """delta_scan with one Householder step a token: forward k u^T, w = S^T k, the read
    (3 a step); backward 8 a step and one du a 32-step checkpoint block."""
    return 2 * P * K * V * 3 * T, 2 * P * K * V * (8 * T + -(-T // 32))


def _vector(P, T, K, V, hasb):
    """vector_delta: forward 3 a step (4 with RWKV-7's b z^T) and z_0 once; backward 8 a
    step (11 with b)."""
    return 2 * P * K * V * ((4 if hasb else 3) * T + 1), 2 * P * K * V * (11 if hasb else 8) * T


def _momentum(P, T, K, V):
    """momentum_scan: forward 3 a step and e_0 once; backward 10 a step and 2 a 64-step
    checkpoint block."""
    return 2 * P * K * V * (3 * T + 1), 2 * P * K * V * (10 * T + 2 * -(-T // 64))


CASES = {  # layer: (options, layer module, its op's name there, booked (forward, backward))
    "deltanet": (dict(num_heads=H, head_dim=K), "_delta_block", "delta_rule",
                 _delta(P, T, K, K)),
    "gated_deltanet": (dict(num_heads=H, head_dim=K), "_delta_block", "delta_rule",
                       _delta(P, T, K, 2 * K)),
    # top_k = num_memories: every memory takes every token (no data-dependent length)
    "mom": (dict(num_heads=H, head_dim=K, num_memories=2, top_k=2), "mom", "delta_rule",
            _delta(2 * P, T, K, 2 * K)),
    "kda": (dict(num_heads=H, head_dim=K), "kda", "kda", _vector(P, T, K, K, False)),
    "gdn2": (dict(num_heads=H, head_dim=K), "gdn2", "erase_delta", _vector(P, T, K, K, False)),
    "comba": (dict(num_heads=H, head_dim=K), "comba", "erase_delta",
              _vector(P, T, K, K, False)),
    "rwkv7": (dict(num_heads=H, head_dim=K, low_rank=4), "rwkv7", "rwkv7",
              _vector(P, T, K, K, True)),
    "momentum_deltanet": (dict(num_heads=H, head_dim=K), "momentum_deltanet",
                          "momentum_delta", _momentum(P, T, K, 2 * K)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layer_flops_counts_the_c_recurrence(name, monkeypatch):
    opts, module, op_name, (fwd, bwd) = CASES[name]
    check_booked(monkeypatch, name, opts, module, op_name, fwd, bwd, B, T, d)
