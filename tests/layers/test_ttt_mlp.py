"""TTT-MLP (arXiv:2407.04620): the paper's loop (autograd on the literal loss) on the layer's
own tensors, with and without the inner norm; with no learning the block reads
q + LN(MLP(q)) with the initial MLP."""

from __future__ import annotations

import pytest
import torch
from _ttt_loop import paper_loop

import rnnzoo
from rnnzoo.ops import memory
from rnnzoo.ops.memory import ttt_minibatch, ttt_sequential


def perturbed(**options):
    torch.manual_seed(0)
    layer = rnnzoo.create("ttt_mlp", **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("op", [ttt_sequential, ttt_minibatch], ids=["sequential", "minibatch"])
@pytest.mark.parametrize("norm", [True, False], ids=["inner_norm", "no_norm"])
def test_equals_the_papers_loop(op, norm):
    """Per-step rates, learned tok offsets, a partial last mini-batch: the engine's analytic
    gradients (through LN, the second layer and GELU) and its dual read equal the loop's
    autograd gradients and explicit weights; the final weights too."""
    layer = perturbed(d_model=12, num_heads=3, head_dim=4, mini_batch_size=4, base_lr=4.0,
                      inner_norm=norm)
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    *mem, conv = layer.init_state(2, dtype=torch.float64)
    q, k, v, lr, _ = layer.op_inputs(x, conv)
    tok, init, w, b = layer.op_args(torch.float64)
    with torch.no_grad():
        z_ref, P_ref = paper_loop(q, k, v, lr, tok, init, w, b, layer.norm_eps, norm)
        z, state = op("mlp", q, k, v, lr, tok, init, tuple(mem), w, b, layer.norm_eps, norm)
    assert (z - z_ref).abs().max() < 1e-12
    dP, Acc = state[:4], state[4:8]
    tok_now = tok[int(state[-1][0]) - 1]             # 11 = 2 * 4 + 3 steps: tok_2
    P = [p0 + d - tok_now * a for p0, d, a in zip(init, dP, Acc)]
    moved = max((p - p0).abs().max() for p, p0 in zip(P_ref, init))
    assert moved > 1e-2                              # the memory did learn
    assert max((p - r).abs().max() for p, r in zip(P, P_ref)) < 1e-12


def test_block_reads_q_plus_norm_of_the_mlp():
    """The layer's output is the gated block over o = q + LN(f_res(q; W_t)); with the MLP's
    weights at their initial values and no learning (tiny rate) f_res is the plain MLP."""
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, mini_batch_size=4, base_lr=1e-300)
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    *_, conv = layer.init_state(1, dtype=torch.float64)
    q, *_ = layer.op_inputs(x, conv)
    W1, b1, W2, b2 = [p.detach() for p in layer.inner]
    z = torch.einsum("bthi,hio->btho", torch.nn.functional.gelu(
        torch.einsum("bthi,hio->btho", q, W1) + b1, approximate="tanh"), W2) + b2
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert (y - layer.op_output(q, z, x)).abs().max() < 1e-12


def test_default_base_rate_is_the_papers():
    assert rnnzoo.create("ttt_mlp", d_model=8).base_lr == 0.1
    assert rnnzoo.create("ttt_linear", d_model=8).base_lr == 1.0


@pytest.mark.parametrize("lengths", [None, [2, 5]], ids=["fresh", "begun"])
def test_reads_in_groups_of_minibatches(monkeypatch, lengths):
    """With the reads' stacks capped at one mini-batch's weights (memory._READ_BYTES), the
    mini-batch form still equals the sequential one, from a fresh state and from one begun
    mid-mini-batch (the first group reads its sums) at a different offset per sequence:
    outputs, state, gradients."""
    layer = perturbed(d_model=6, num_heads=2, head_dim=3, mini_batch_size=4)
    x = torch.randn(2, 15, 6, dtype=torch.float64)
    s = None
    if lengths is not None:
        with torch.no_grad():
            _, s = layer(x[:, :5], mode="sequential", lengths=torch.tensor(lengths))
    monkeypatch.setattr(memory, "_READ_BYTES", 1)
    xs = x[:, 5:].clone().requires_grad_()
    out = {}
    for mode in ("sequential", "minibatch"):
        y, s1 = layer(xs, s, mode=mode)
        loss = y.square().sum() + sum(t.sum() for t in s1[:-2])
        out[mode] = (y, *s1, *torch.autograd.grad(loss, (xs, *layer.parameters())))
    for a, b in zip(out["sequential"], out["minibatch"]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
