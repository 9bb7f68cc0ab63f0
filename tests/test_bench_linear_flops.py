"""bench.layer_flops counts the CPU path of the linear-attention layers whose ops run a C
recurrence there (ops.flop_count.native in ops.chunk.linear's ssd, mlstm and
gated_linear_attention; ops.native.ssd_scan and ops.native.gla_scan book their products), not the ops' chunk forms,
which the CPU timing never runs.

Each case checks (1) what the kernels booked inside layer_flops, against the count written
out here from the shapes (per (batch, head) pair, 2 FLOPs a multiply-add), and (2) the whole
count: the layer's chunk-form count (torch's products, no counting) less the op's chunk form
at the very inputs the layer gave it, plus (1)."""

from __future__ import annotations

import pytest

from _booked_flops import check_booked

B, T, d = 2, 37, 16
# ssd_bwd_chunk at T = 37: chunks of 32 and 5 steps, causal row tiles of 16 rows:
# sum over tiles of rows x columns [0, i1): 16 16 + 16 32 + 5 5, and rows x rows [i0, n):
# 16 32 + 16 16 + 5 5 -- both 793
TRI = 16 * 16 + 16 * 32 + 5 * 5


def _ssd(H, K, V):
    """ssd_scan: forward S += k v, o += q S (2 a step and state entry); backward dq, dk, dv,
    dS's four (K, V) products a step, the (n, n) tiles' P = dO V^T and A = Q K^T, dq += P K
    (TRI (V + 2 K)), dk += P^T Q and dv += A^T dO (TRI (K + V)); no <dS_T, S_T> (the
    layer's final state is unread here: its gradient is None, not zeros)."""
    P = B * H
    return (2 * P * K * V * 2 * T,
            2 * P * (4 * T * K * V + TRI * (V + 2 * K) + TRI * (K + V)))


def _gla(H, K, V):
    """gla_scan: forward k v^T and the read (2 a step); backward 5 a step (the rebuild's
    k v^T, D's q do^T, dq's and dk's row sums, dv) and dg's block-end rowsum once a 32-step
    block (2 blocks)."""
    P = B * H
    return 2 * P * K * V * 2 * T, 2 * P * K * V * (5 * T + 2)


CASES = {  # layer: (options, layer module, its op's name there, (H, K, V) at the op, booked)
    "mamba2": (dict(d_state=4, head_dim=8), "mamba2", "ssd", (4, 4, 8), _ssd(4, 4, 8)),
    "mamba3": (dict(d_state=4, head_dim=8), "mamba3", "ssd", (4, 4, 8), _ssd(4, 4, 8)),
    "retnet": (dict(num_heads=2), "retnet", "ssd", (2, 8, 16), _ssd(2, 8, 16)),
    # its state [S | z]: V = head_dim + 1
    "linear_attention": (dict(num_heads=2), "linear_attention", "ssd", (2, 8, 9),
                         _ssd(2, 8, 9)),
    "lightning_attention": (dict(num_heads=2), "lightning_attention", "ssd", (2, 8, 8),
                            _ssd(2, 8, 8)),
    # the memory through ssd_scan (ops.native.mlstm_scan), the gates' K-wide pass not booked
    "mlstm": (dict(num_heads=2, qkv_blocksize=4), "mlstm", "mlstm", (2, 16, 16),
              _ssd(2, 16, 16)),
    "rwkv6": (dict(head_dim=8, mix_rank=2, decay_rank=4), "rwkv6", "gated_linear_attention",
              (2, 8, 8), _gla(2, 8, 8)),
    "lightnet": (dict(num_heads=2, expand_ratio=4, gate_low_rank_dim=4), "lightnet",
                 "gated_linear_attention", (2, 4, 8), _gla(2, 4, 8)),
    # the other layers on gla_scan (a vector decay)
    "gla": (dict(num_heads=2, decay_rank=4), "gla", "gated_linear_attention", (2, 4, 8),
            _gla(2, 4, 8)),
    "hgrn2": (dict(num_heads=2, d_state=4), "hgrn2", "gated_linear_attention", (2, 4, 8),
              _gla(2, 4, 8)),
    "gateloop": (dict(num_heads=2, d_state=4), "gateloop", "gated_linear_attention", (2, 8, 8),
                 _gla(2, 8, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layer_flops_counts_the_c_recurrence(name, monkeypatch):
    opts, module, op_name, (H, K, V), (fwd, bwd) = CASES[name]

    def shapes(a, kw):  # the shapes booked above
        assert a[1].shape[-1] == K and a[2].shape[2:] == (H, V)

    check_booked(monkeypatch, name, opts, module, op_name, fwd, bwd, B, T, d, shapes)
