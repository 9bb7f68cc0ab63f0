"""bench.layer_flops counts what the CPU path does where an op's native path does other work
than its PyTorch form (ops.flop_count): mesanet's C recurrence (each step's CG on its own H_t,
stopped at cg_tol) books its formula with the iterations it ran, not the chunk form's
products; log_linear_mamba2 counts its aligned chunks, not the dense-slot chunk form; Based's
parallel form counts poly_attn.c's causal tiles."""

from __future__ import annotations

import pytest
import torch

from rnnzoo import bench
from rnnzoo.ops import backend, feature_maps, flop_count
from rnnzoo.ops.native import mesa_scan


def _torch_form(name, B, T, d, options):
    """The old count: every op as its PyTorch form."""
    from rnnzoo.registry import create
    layer = create(name, d_model=d, **options)
    x = torch.randn(B, T, d, requires_grad=True)
    with backend.force("torch"), torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
        return bench.counted_flops(lambda: layer(x)[0])


def test_mesanet_counts_its_c_recurrence():
    """cg_tol=0 runs every step's max_cg_steps iterations: the count is the projections
    (qk, v, g, o and the two gate rows, forward and both gradients), the depthwise short
    conv's and mesa_scan.flops over B T H steps of `steps` iterations each."""
    B, T, d, H, K, steps, d_conv = 2, 24, 16, 2, 8, 5, 4
    opts = dict(num_heads=H, head_dim=K, max_cg_steps=steps, cg_tol=0.0, d_conv=d_conv)
    linears = 2 * B * T * (d * 2 * H * K + d * H * K + 2 * d * H + d * H * K + H * K * d)
    conv = 2 * B * T * 2 * H * K * d_conv
    fwd, bwd = mesa_scan.flops(B * T * H, B * T * H * steps, K, K)
    got = bench.layer_flops("mesanet", B, T, d, opts)
    assert got == 3 * (linears + conv) + fwd + bwd
    assert got != _torch_form("mesanet", B, T, d, opts)


def test_mesanet_counts_the_iterations_run():
    """With the default cg_tol the solves stop early: fewer FLOPs than cg_tol=0, and the
    count is the C kernel's report (its iterations), which the counter alone cannot see."""
    B, T, d = 2, 16, 16
    early = bench.layer_flops("mesanet", B, T, d, dict(num_heads=2))
    full = bench.layer_flops("mesanet", B, T, d, dict(num_heads=2, cg_tol=0.0))
    assert early < full
    with flop_count.counting() as tally:
        pass
    assert tally == [0]


def test_log_linear_mamba2_counts_its_cpu_chunks():
    B, T, d = 2, 64, 16
    opts = dict(chunk_size=16, head_dim=8)
    got = bench.layer_flops("log_linear_mamba2", B, T, d, opts)
    old = _torch_form("log_linear_mamba2", B, T, d, opts)
    assert 0 < got < old


def test_outside_counting_native_is_use_native():
    t = torch.ones(2)
    assert flop_count.native(t) == backend.use_native(t)
    with backend.force("torch"):
        assert not flop_count.native(t)
        with flop_count.counting():
            assert flop_count.native(t) and not flop_count.native(t.double(), t)




def test_miras_layers_count_their_c_reads(monkeypatch):
    """memora, moneta and yaad count the C reads' recurrence (miras_read.flops, 16 I O a
    step and layer, over the T / C chunks of a fresh batch), exactly; memora's and moneta's
    PyTorch form of the reads (the (C I, C) x (C, O) product of every step, C times the
    recurrence's work) counted more than that (yaad's is the dual form, fewer)."""
    from rnnzoo.ops import memory
    from rnnzoo.ops.native import miras_read
    B, T, d, H, C = 2, 32, 16, 2, 8
    K = d // H
    steps = B * H * T
    read = sum(sum(miras_read.flops(steps, i, o)) for i, o in ((K, 4 * K), (4 * K, K)))
    opts = dict(num_heads=H, chunk_size=C)
    for name in ("memora", "moneta", "yaad"):
        got = bench.layer_flops(name, B, T, d, opts)
        with monkeypatch.context() as m:
            m.setattr(miras_read, "flops", lambda *a: (0, 0))
            assert got - bench.layer_flops(name, B, T, d, opts) == read
            m.setattr(memory, "_native_read", lambda *a: None)
            old = bench.layer_flops(name, B, T, d, opts)
        assert old - got > read if name != "yaad" else old != got


@pytest.mark.skipif(feature_maps.poly_lib(torch.zeros(1)) is None, reason="no C compiler")
def test_based_counts_its_c_tiles():
    """Based / ReBased's auto mode at T <= 768 is the parallel form in poly_attn.c, whose
    products cover the causal tiles' bands only (bands.h: 2656 of a 64-query tile's 4096
    score entries; a tile of <= 16 queries whole): layer_flops books those (s = q k^T and
    P v forward; dP, dv, dq, dk backward), not the chunk form that backend.force picks."""
    assert feature_maps.band_entries(64, 64) == 64 * 64 - 1440
    assert feature_maps.band_entries(13, 64) == 13 * 13
    B, H, T, d, V = 2, 3, 70, 5, 4
    q, k = (torch.randn(B, T, H, d, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, H, V, requires_grad=True)
    with flop_count.counting() as tally:
        o, _ = feature_maps.feature_attention(q, k, v, "taylor", mode="parallel")
        o.sum().backward()
    n, W = feature_maps.band_entries(T, 64), V + 1  # v carries the normaliser's column
    assert tally[0] == 2 * B * H * n * (d + W) + 2 * B * H * n * 2 * (W + d)
    for name in ("based", "rebased"):
        got = bench.layer_flops(name, 2, 40, 16)
        assert got == bench.layer_flops(name, 2, 40, 16, mode="parallel")
        assert got != bench.layer_flops(name, 2, 40, 16, mode="chunk")
