"""bench.layer_flops counts DeltaProduct's CPU path (layers/deltaproduct.py `_product`, the C
recurrence booking ops.native.delta_scan.flops through ops.flop_count), not delta_product's
chunk form, which the CPU timing never runs."""

from __future__ import annotations

import torch

from rnnzoo import bench
from rnnzoo.ops import backend
from rnnzoo.ops.native import delta_scan


def test_deltaproduct_counts_its_c_recurrence():
    """The count is the projections (qkv, the gates, the output gate, the output, forward and
    both gradients), the depthwise short conv's, and delta_scan.flops over B H pairs of T
    tokens of n_h steps; the old count (the chunk form) differs."""
    B, T, d, H, K, n, d_conv = 2, 37, 16, 2, 4, 2, 4
    V = 2 * K  # expand_v = 2
    opts = dict(num_heads=H, head_dim=K, num_householder=n, d_conv=d_conv)
    C = H * K + n * (H * K + H * V)
    linears = 2 * B * T * (d * C + d * (n * H + H) + d * H * V + H * V * d)
    conv = 2 * B * T * C * d_conv
    fwd, bwd = delta_scan.flops(B * H, T, n, K, V)
    got = bench.layer_flops("deltaproduct", B, T, d, opts)
    assert got == 3 * (linears + conv) + fwd + bwd
    from rnnzoo.registry import create
    layer = create("deltaproduct", d_model=d, **opts)
    x = torch.randn(B, T, d, requires_grad=True)
    with backend.force("torch"), torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
        chunk_form = bench.counted_flops(lambda: layer(x)[0])
    assert got != chunk_form


def test_delta_scan_flops_formula():
    """Per (pair, token) and state entry: forward 2 (2 n + 1), backward 2 (5 n + 3), and a
    backward du per 32-step checkpoint block."""
    assert delta_scan.flops(1, 1, 1, 1, 1) == (6, 2 * (8 + 1))
    assert delta_scan.flops(3, 40, 2, 4, 8) == (2 * 96 * 5 * 40, 2 * 96 * (13 * 40 + 3))
