"""Moneta (Miras, arXiv:2504.13173): the paper's update (l_p attentional bias, l_q retention)
written as a plain loop on the layer's own tensors; with p = q = 2 it is the l2 rule, Titans'
memory without momentum."""

from __future__ import annotations

import pytest
import torch
from _miras_loop import OPS, miras_loop, setup

import rnnzoo
from rnnzoo.ops.memory import attentional_bias, retention, titans_init_state, titans_sequential


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_equals_the_papers_update(op, depth):
    layer, t, init, mem = setup("moneta", memory_depth=depth, base_lr=4.0)
    with torch.no_grad():
        z_ref, U_ref = miras_loop(*t, 4, init, "lp", "lq", p=3.0, qn=4.0)
        z, state = op(layer.kind, *t, 4, init, mem, *layer.rules())
    assert (z - z_ref).abs().max() < 1e-12
    U = state[depth:2 * depth]
    assert max(u.abs().max() for u in U) > 1e-2                 # the memory did learn
    assert max((u - r).abs().max() for u, r in zip(U, U_ref)) < 1e-12


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
def test_p_and_q_two_is_the_l2_rule(op):
    """|e|_2^2 (gradient 2e) and phi = identity: W_t = alpha_t W_t-1 - 2 eta_t k_t e_t^T, the
    Titans memory (ops.memory.titans_*) with no momentum and theta = 2 eta."""
    layer, (q, k, v, eta, alpha, delta), init, mem = setup("moneta", memory_depth=1, p=2.0,
                                                           q=2.0, base_lr=2.0)
    with torch.no_grad():
        z, _ = op("linear", q, k, v, eta, alpha, delta, 4, init, mem, *layer.rules())
        tmem = titans_init_state("linear", 2, 2, 4, dtype=torch.float64)
        z_ref, _ = titans_sequential("linear", q, k, v, 2 * eta, 1 - alpha, torch.zeros_like(eta),
                                     4, [init[0], torch.zeros(2, 4, dtype=torch.float64)], tmem,
                                     None, None, 1e-6, False, False)
    assert (z - z_ref).abs().max() < 1e-12


def test_rule_names_checked():
    with pytest.raises(ValueError, match="attentional bias must be"):
        attentional_bias("l3")
    with pytest.raises(ValueError, match="retention must be"):
        retention("l1")
    with pytest.raises(ValueError, match="p and q must be at least 1"):
        rnnzoo.create("moneta", d_model=8, p=0.5)
