"""Universal Transformer with ACT: the shared block by hand, ACT by a plain loop, halting,
ponder gradients, causality and streaming."""

from __future__ import annotations

import math

import pytest
import torch

from rnnzoo.models.universal import build_universal

LAYERS = ["mingru", "lstm", "attention"]


def tiny(layer, **kw):
    torch.manual_seed(0)
    opts = dict(num_heads=2, max_len=32) if layer == "attention" else {}
    kw = dict(dict(layer=layer, d_model=8, vocab_size=11, mlp_ratio=2.0, layer_options=opts,
                   max_steps=5), **kw)
    return build_universal(**kw).double()


def tokens(B=2, T=7, seed=1):
    return torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(seed))


def sinusoid(pos, step, d):
    """The paper's position + step signal, written out channel by channel."""
    out = torch.zeros(len(pos), d, dtype=torch.float64)
    for i, p in enumerate(pos):
        for c in range(d):
            w = 1.0 / 10000 ** ((c - c % 2) / d)
            f = math.sin if c % 2 == 0 else math.cos
            out[i, c] = f(p * w) + f(step * w)
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_unreachable_threshold_equals_block_applied_n_times(layer):
    model = tiny(layer)
    with torch.no_grad():   # halting probability exactly 0: the threshold is never reached
        model.halting.weight.zero_()
        model.halting.bias.fill_(-1e4)
    x = tokens()
    y, _, act = model(x, return_act=True)
    s = model.embed(x)
    T = x.shape[1]
    for n in range(model.max_steps):
        s, _ = model.block(s + sinusoid(range(T), n + 1, 8), None)
    ref = model.head(model.norm(s))
    assert (y - ref).abs().max() < 1e-12
    assert torch.equal(act.steps, torch.full_like(act.steps, 5.0))
    assert torch.equal(act.remainders, torch.ones_like(act.remainders))
    # act=False is the same fixed-depth model
    fixed = tiny(layer, act=False)
    fixed.load_state_dict(model.state_dict())
    assert (fixed(x)[0] - ref).abs().max() < 1e-12


def spread_halting(model):
    with torch.no_grad():   # halting probabilities spread over (0, 1): positions differ
        model.halting.bias.fill_(-3.0)


@pytest.mark.parametrize("layer", ["mingru", "attention"])
def test_act_weighted_sum_equals_plain_loop(layer):
    model = tiny(layer, max_steps=6)
    spread_halting(model)
    x = tokens(B=2, T=6)
    B, T = x.shape
    y, _, act = model(x, return_act=True)
    with torch.no_grad():
        s = model.embed(x).clone()
        out = torch.zeros_like(s)
        cum = [[0.0] * T for _ in range(B)]
        halted = [[False] * T for _ in range(B)]
        steps = torch.zeros(B, T, dtype=torch.float64)
        rem = torch.zeros(B, T, dtype=torch.float64)
        for n in range(6):
            new, _ = model.block(s + sinusoid(range(T), n + 1, 8), None)
            p = torch.sigmoid(model.halting(new))[..., 0]
            for b in range(B):
                for t in range(T):
                    if halted[b][t]:
                        continue
                    steps[b, t] += 1
                    if cum[b][t] + float(p[b, t]) >= model.threshold or n == 5:
                        w = 1.0 - cum[b][t]
                        rem[b, t] = w
                        halted[b][t] = True
                    else:
                        w = float(p[b, t])
                        cum[b][t] += w
                    out[b, t] += w * new[b, t]
                    s[b, t] = new[b, t]
        ref = model.head(model.norm(out))
    assert (y - ref).abs().max() < 1e-12
    assert torch.equal(act.steps, steps)
    assert (act.remainders - rem).abs().max() < 1e-12
    assert (act.ponder - (steps + rem)).abs().max() < 1e-12
    assert len(set(steps.flatten().tolist())) > 1      # the positions did not halt together


def test_positions_halt_independently():
    model = tiny("mingru", max_steps=6)
    spread_halting(model)
    x = tokens(B=3, T=8, seed=4)
    y, _, act = model(x, return_act=True)
    assert len(set(act.steps.flatten().tolist())) >= 3
    for b in range(3):   # each sequence alone halts where it did in the batch
        yb, _, ab = model(x[b:b + 1], return_act=True)
        assert torch.equal(ab.steps, act.steps[b:b + 1])
        assert (yb - y[b:b + 1]).abs().max() < 1e-12


def test_ponder_cost_is_differentiable():
    model = tiny("attention", max_steps=6)
    spread_halting(model)
    x = tokens(B=2, T=6, seed=3)
    _, _, act = model(x, return_act=True)
    act.ponder.sum().backward()
    g = model.halting.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0
    assert model.block.mixer.qkv.weight.grad.abs().max() > 0   # through the states it read
    # the gradient equals a central difference (no threshold crossing within h)
    analytic = float(model.halting.bias.grad)
    h = 1e-6
    vals = []
    for sign in (1, -1):
        with torch.no_grad():
            model.halting.bias.add_(sign * h)
            vals.append(float(model(x, return_act=True)[2].ponder.sum()))
            model.halting.bias.sub_(sign * h)
    assert abs((vals[0] - vals[1]) / (2 * h) - analytic) < 1e-6 * max(1.0, abs(analytic))
    assert abs(analytic) > 1e-3


@pytest.mark.parametrize("layer", ["mingru", "attention"])
def test_causal_when_the_layer_is(layer):
    model = tiny(layer, max_steps=6)
    spread_halting(model)
    x = tokens(B=2, T=9, seed=5)
    y, _, act = model(x, return_act=True)
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 3) % 11
    y2, _, act2 = model(x2, return_act=True)
    assert (y2[:, :5] - y[:, :5]).abs().max() < 1e-12
    assert torch.equal(act2.steps[:, :5], act.steps[:, :5])
    assert (y2[:, 5:] - y[:, 5:]).abs().max() > 1e-3


@pytest.mark.parametrize("layer", LAYERS)
def test_step_and_split_equal_forward(layer):
    model = tiny(layer)
    spread_halting(model)
    x = tokens(B=2, T=7, seed=6)
    ref, _, act = model(x, return_act=True)
    state, outs, steps = None, [], []
    for t in range(7):
        o, state, a = model.step(x[:, t], state, return_act=True)
        outs.append(o)
        steps.append(a.steps)
    assert (torch.stack(outs, 1) - ref).abs().max() < 1e-10
    assert torch.equal(torch.stack(steps, 1), act.steps)
    a, s = model(x[:, :3])
    b, _ = model(x[:, 3:], s)
    assert (torch.cat([a, b], 1) - ref).abs().max() < 1e-10
    out = model.float().generate(x[:, :3].contiguous(), 4, temperature=0)
    assert out.shape == (2, 7)


def test_bad_options():
    with pytest.raises(ValueError, match="repeats one shared block: give num_layers=1"):
        build_universal(layer="mingru", vocab_size=5, num_layers=2)
    with pytest.raises(ValueError, match="max_steps must be an int >= 1, got 0"):
        build_universal(layer="mingru", vocab_size=5, max_steps=0)
    with pytest.raises(ValueError, match=r"threshold must lie in \(0.0, 1.0\], got 1.5"):
        build_universal(layer="mingru", vocab_size=5, threshold=1.5)
