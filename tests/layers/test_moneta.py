"""Moneta (Miras, arXiv:2504.13173): the paper's update (l_p attentional bias, l_q retention)
written as a plain loop on the layer's own tensors; with p = q = 2 it is the l2 rule, Titans'
memory without momentum."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _miras_loop import OPS, miras_loop, setup

import rnnzoo
from rnnzoo.ops.memory import attentional_bias, retention, titans_init_state, titans_sequential
from rnnzoo.ops.native import conv as native_conv
from rnnzoo.ops.native import gated_norm

sys.path.insert(0, str(Path(__file__).parents[1] / "ops"))
from _native_check import counter  # noqa: E402


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


@pytest.mark.parametrize("name", ["moneta", "yaad", "memora"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_inputs_and_output_as_written(monkeypatch, name, dtype):
    """MirasLayer.op_inputs / op_output (the q, k norms fused into the C convolution, the
    RMSNorm and sigmoid gate in C on the CPU) against the block written plainly with torch
    ops: values and the gradients of x and every parameter. The C kernels must have run."""
    calls = counter(monkeypatch, native_conv, "short_conv")
    gates = counter(monkeypatch, gated_norm, "rms_norm_gate")
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=12, num_heads=2, head_dim=3).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 7, 12, dtype=dtype, requires_grad=True)
    conv0 = 0.5 * torch.randn_like(layer.init_state(3, dtype=dtype)[-1])
    z = torch.randn(3, 7, 2, 3, dtype=dtype, requires_grad=True)
    B, T, H, K = 3, 7, 2, 3

    def plain():
        qkv, conv = layer.conv(layer.qkv_proj(x), conv0)
        q, k, v = qkv.reshape(B, T, 3, H, K).unbind(2)
        q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
        gates = layer.gate_proj(x).reshape(B, T, -1, H)
        eta, alpha = layer.base_lr * torch.sigmoid(gates[:, :, 0]), torch.sigmoid(gates[:, :, 1])
        delta = F.softplus(gates[:, :, 2]) if layer.with_delta else torch.zeros_like(eta)
        gate = torch.sigmoid(layer.g_proj(x)).view(z.shape)
        return q, k, v, eta, alpha, delta, conv, layer.o_proj((layer.norm(z) * gate).flatten(2))

    def fused():
        before = calls[0], gates[0]
        ys = (*layer.op_inputs(x, conv0), layer.op_output(z, x))
        ran.append((calls[0] - before[0], gates[0] - before[1]))
        return ys

    ran = []

    tol = 1e-12 if dtype == torch.float64 else 1e-5
    outs = []
    for f in (plain, fused):
        ys = f()
        w = [torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(i))
             for i, y in enumerate(ys)]
        params = [x, z, *layer.parameters()]
        grads = torch.autograd.grad(sum((y * wi).sum() for y, wi in zip(ys, w)), params,
                                    allow_unused=True)
        outs.append((ys, grads))
    assert ran == [(1, 1)]  # the fused side's convolution and norm x gate ran in C
    for a, b in zip(outs[0][0], outs[1][0]):
        assert (a - b).abs().max() < tol
    for a, b in zip(*(o[1] for o in outs)):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max() < tol * max(1.0, a.abs().max())
