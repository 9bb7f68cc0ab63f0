"""The utilisation column's FLOP count (issue #17): a depthwise conv's
backward is twice its forward, not `groups` times a dense one (torch.utils.flop_counter's
own convolution_backward formula drops the groups from the weight gradient), and a complex
matrix product is four real ones."""

import pytest
import torch
import torch.nn.functional as F

from rnnzoo import bench


@pytest.mark.parametrize("groups", [1, 4, 12])
def test_conv_forward_and_backward_counted_by_hand(groups):
    """conv1d: 2 B T_out C_out (C_in / groups) K forward; d input and d weight the same
    again each (bias and elementwise work are not counted)."""
    B, C, L, K, C_out = 2, 12, 9, 3, 12
    x = torch.randn(B, C, L, requires_grad=True)
    w = torch.randn(C_out, C // groups, K, requires_grad=True)
    forward = 2 * B * (L - K + 1) * C_out * (C // groups) * K
    assert bench.counted_flops(lambda: F.conv1d(x, w, groups=groups)) == 3 * forward
    w.requires_grad_(False)  # only d input
    assert bench.counted_flops(lambda: F.conv1d(x, w, groups=groups)) == 2 * forward


def test_fsmn_counted_equals_the_hand_count():
    """fsmn: two (d, d) linears and a depthwise filter of order + 1 taps, each product
    counted once forward and twice backward."""
    B, T, d, order = 2, 16, 8, 5
    linears = 2 * (2 * B * T * d * d)
    conv = 2 * B * T * d * (order + 1)
    assert bench.layer_flops("fsmn", B, T, d, dict(order=order)) == 3 * (linears + conv)


@pytest.mark.parametrize("name,mode,options", [
    ("fsmn", "conv", {}), ("pgn", "conv", dict(window_size=4)), ("mamba", "scan", {})])
def test_backward_counted_at_most_twice_the_forward(name, mode, options):
    """Every product's backward makes at most two gradients of its forward's size: a count
    above that books work that is not done (as the depthwise conv's was, d_model times)."""
    from torch.utils.flop_counter import FlopCounterMode

    from rnnzoo.registry import create
    B, T, d = 2, 16, 8
    layer = create(name, d_model=d, **options).to("meta")
    x = torch.randn(B, T, d, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x, mode=mode)[0]
    forward = counter.get_total_flops()
    total = bench.layer_flops(name, B, T, d, options, mode=mode)
    assert forward < total <= 3 * forward


def test_a_complex_product_counts_four_real_ones():
    a = torch.randn(3, 4, 5, dtype=torch.complex64, requires_grad=True)
    b = torch.randn(3, 5, 6, dtype=torch.complex64)
    real = 2 * 3 * 4 * 5 * 6
    assert bench.counted_flops(lambda: torch.bmm(a, b).real) == 4 * 2 * real  # d a only
    ar = a.detach().real.requires_grad_()
    assert bench.counted_flops(lambda: torch.bmm(ar, b.real)) == 2 * real


def test_flops_counted_on_the_path_the_cpu_runs():
    """gsa's chunk mode takes its two-pass form on a CPU tensor and the generic per-slot
    form elsewhere (the meta device): the count is of the CPU's form, the one timed."""
    from torch.utils.flop_counter import FlopCounterMode

    from rnnzoo.registry import create
    B, T, d = 2, 32, 16
    options = dict(num_heads=2, num_slots=4, chunk_size=8)
    layer = create("gsa", d_model=d, **options).to("meta")
    x = torch.randn(B, T, d, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x)[0].sum().backward()
    counted = bench.layer_flops("gsa", B, T, d, options)
    assert 0 < counted < counter.get_total_flops()
