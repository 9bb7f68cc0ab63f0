"""Memora (Miras, arXiv:2504.13173): the paper's update (l2 attentional bias, KL retention)
as a plain loop on the layer's own tensors; it is the multiplicative-weights update
W_t ∝ W_t-1^alpha exp(-eta grad), so every row of the memory stays on the simplex."""

from __future__ import annotations

import pytest
import torch
from _miras_loop import OPS, memory, miras_loop, setup


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_equals_the_papers_update(op, depth):
    layer, t, init, mem = setup("memora", memory_depth=depth, base_lr=4.0)
    with torch.no_grad():
        z_ref, _ = miras_loop(*t, 4, init, "l2", "kl")
        z, _ = op(layer.kind, *t, 4, init, mem, *layer.rules())
    assert (z - z_ref).abs().max() < 1e-12


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
def test_multiplicative_weights_on_the_simplex(op):
    """Uniform initial memory (U_init = 0), chunk size 1: W_t = W_t-1^alpha_t exp(-eta_t g_t),
    each row renormalised, g_t = k_t (W_t-1^T k_t - v_t)^T, written without logs; every row
    positive and summing to 1 at every step."""
    layer, (q, k, v, eta, alpha, delta), _, mem = setup("memora", memory_depth=1, base_lr=4.0)
    init = [torch.zeros(2, 4, 4, dtype=torch.float64)]
    with torch.no_grad():
        z, state = op("linear", q, k, v, eta, alpha, delta, 1, init, mem, *layer.rules())
    W = torch.full((2, 2, 4, 4), 0.25, dtype=torch.float64)
    for t in range(q.shape[1]):
        e = torch.einsum("bhi,bhio->bho", k[:, t], W) - v[:, t]
        g = k[:, t, :, :, None] * e[:, :, None, :]
        W = W ** alpha[:, t, :, None, None] * torch.exp(-eta[:, t, :, None, None] * g)
        W = W / W.sum(-1, keepdim=True)
        assert (W > 0).all() and (W.sum(-1) - 1).abs().max() < 1e-12
        assert (z[:, t] - memory([W], q[:, t])).abs().max() < 1e-12
    assert (W - 0.25).abs().max() > 1e-2                        # the memory moved
