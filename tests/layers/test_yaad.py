"""Yaad (Miras, arXiv:2504.13173): the paper's update (Huber attentional bias with a
data-dependent threshold, l2 retention) as a plain loop on the layer's own tensors; below the
threshold it is the l2 rule, Titans' memory without momentum; far above it the step is
bounded by delta."""

from __future__ import annotations

import pytest
import torch
from _miras_loop import OPS, miras_loop, setup

from rnnzoo.ops.memory import titans_init_state, titans_sequential


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_equals_the_papers_update(op, depth):
    """Thresholds around the errors' sizes, so both branches of the Huber loss are taken."""
    layer, (q, k, v, eta, alpha, delta), init, mem = setup("yaad", memory_depth=depth,
                                                           base_lr=4.0)
    delta = 0.3 + 0.5 * torch.rand_like(delta)
    with torch.no_grad():
        z_ref, _ = miras_loop(q, k, v, eta, alpha, delta, 4, init, "huber", "l2")
        z, _ = op(layer.kind, q, k, v, eta, alpha, delta, 4, init, mem, *layer.rules())
        z_l2, _ = op(layer.kind, q, k, v, eta, alpha, 1e9 + delta, 4, init, mem, *layer.rules())
    assert (z - z_ref).abs().max() < 1e-12
    assert (z - z_l2).abs().max() > 1e-3                        # some errors were above delta


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
def test_below_the_threshold_it_is_the_l2_rule(op):
    """Every error below delta: W_t = alpha_t W_t-1 - eta_t k_t e_t^T, Titans' memory with no
    momentum (ops.memory.titans_*, theta = eta)."""
    layer, (q, k, v, eta, alpha, _), init, mem = setup("yaad", memory_depth=1, base_lr=2.0)
    with torch.no_grad():
        z, _ = op("linear", q, k, v, eta, alpha, torch.full_like(eta, 1e9), 4, init, mem,
                  *layer.rules())
        tmem = titans_init_state("linear", 2, 2, 4, dtype=torch.float64)
        z_ref, _ = titans_sequential("linear", q, k, v, eta, 1 - alpha, torch.zeros_like(eta), 4,
                                     [init[0], torch.zeros(2, 4, dtype=torch.float64)], tmem,
                                     None, None, 1e-6, False, False)
    assert (z - z_ref).abs().max() < 1e-12
