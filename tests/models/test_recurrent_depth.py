"""Recurrent depth: K iterations by hand, streaming, truncated backpropagation, and the
diffusion forcing sampler against sequential decoding at convergence."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.models.recurrent_depth import build_recurrent_depth

LAYERS = ["mingru", "attention"]


def tiny(layer, contract=False, **kw):
    torch.manual_seed(0)
    opts = dict(num_heads=2, max_len=64) if layer == "attention" else {}
    kw = dict(dict(layer=layer, d_model=8, vocab_size=11, mlp_ratio=2.0, layer_options=opts,
                   num_steps=3), **kw)
    model = build_recurrent_depth(**kw).double()
    with torch.no_grad():
        model.head.weight.mul_(5)                 # sharp logits: greedy choices are not ties
        if contract:                              # a core that contracts in s ("robust recurrence")
            model.adapter.weight[:, :8].mul_(0.1)
    return model


def tokens(B=2, T=6, seed=1):
    return torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer", LAYERS)
def test_forward_is_k_iterations_of_the_core(layer):
    model = tiny(layer, prelude=1, core=2, coda=1, num_steps=4)
    x = tokens()
    s0 = torch.randn(2, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, _ = model(x, s0=s0)
    pre, core, coda = model.blocks[0], model.blocks[1:3], model.blocks[3]
    e, _ = pre(model.embed(x))
    s = s0
    for _ in range(4):
        u = model.adapter(torch.cat([s, e], -1))
        for b in core:
            u, _ = b(u)
        s = model.core_norm(u)
    ref = model.head(model.norm(coda(s)[0]))
    assert (y - ref).abs().max() < 1e-12
    # K chosen per call (test-time compute): 2 iterations by hand
    y2, st = model(x, s0=s0, num_steps=2)
    s = s0
    for _ in range(2):
        u = model.adapter(torch.cat([s, e], -1))
        for b in core:
            u, _ = b(u)
        s = model.core_norm(u)
    assert (y2 - model.head(model.norm(coda(s)[0]))).abs().max() < 1e-12 and len(st[1]) == 2
    with pytest.raises(ValueError, match="num_steps=3 but the state holds 2 iterations"):
        model(x, st, num_steps=3)
    # s_0 is drawn: a different draw gives a different output, the same seed the same one
    g = torch.Generator
    a, _ = model(x, generator=g().manual_seed(3))
    b, _ = model(x, generator=g().manual_seed(3))
    c, _ = model(x, generator=g().manual_seed(4))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-6


@pytest.mark.parametrize("layer", LAYERS)
def test_step_and_split_equal_forward(layer):
    model = tiny(layer, init_std=0.0)
    x = tokens(T=7)
    ref, _ = model(x)
    state, outs = None, []
    for t in range(7):
        o, state = model.step(x[:, t], state)
        outs.append(o)
    assert (torch.stack(outs, 1) - ref).abs().max() < 1e-10
    a, s = model(x[:, :3])
    b, _ = model(x[:, 3:], s)
    assert (torch.cat([a, b], 1) - ref).abs().max() < 1e-10


def test_truncated_backprop_keeps_the_last_iterations():
    x = tokens()
    grads = {}
    for depth in (None, 2):
        model = tiny("mingru", num_steps=4, backprop_depth=depth)
        s0 = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
        model(x, s0=s0)[0].sum().backward()
        grads[depth] = (s0.grad, model.adapter.weight.grad.clone())
    assert grads[None][0].abs().max() > 0 and grads[2][0] is None   # s_0 sits outside the window
    assert (grads[None][1] - grads[2][1]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="backprop_depth must be a positive int or None, got 0"):
        tiny("mingru", backprop_depth=0)


@pytest.mark.parametrize("layer,inner,window,prefill", [("mingru", 1, None, True),
                                                        ("mingru", 2, 6, False),
                                                        ("attention", 1, None, True)])
def test_diffusion_forcing_equals_sequential_at_convergence(layer, inner, window, prefill):
    model = tiny(layer, contract=True, num_steps=30)
    prompt = tokens(B=2, T=4, seed=7)
    seq = model.generate(prompt, max_new_tokens=8, temperature=0)      # 30 iterations a token
    out, passes = model.diffusion_forcing_generate(
        prompt, 8, inner_recurrence=inner, exit_threshold=1e-11, num_steps=40,
        max_wavefront=window, full_prefill=prefill, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, seq)
    assert len(set(seq[:, 4:].flatten().tolist())) > 2                 # not one repeated token
    assert passes * inner < 8 * 30                                     # parallel along the diagonal
    if inner == 1:   # unsettled (one iteration a position) it decodes other tokens: the check bites
        rough, _ = model.diffusion_forcing_generate(prompt, 8, num_steps=1)
        assert not torch.equal(rough, seq)


def test_diffusion_forcing_budget_and_errors():
    model = tiny("mingru", contract=True, num_steps=3)
    prompt = tokens(B=1, T=3, seed=8)
    # each position gets 3 iterations; without prefill the prompt's positions 0..2 are in
    # flight from the start, position 3 + i enters after pass 1 + i, and the last that decides
    # a token (6) runs passes 5, 6, 7; with prefill position 3 is the first, 6 runs 4, 5, 6
    for prefill, expected in ((False, 7), (True, 6)):
        out, passes = model.diffusion_forcing_generate(prompt, 5, full_prefill=prefill)
        assert out.shape == (1, 8) and torch.equal(out[:, :3], prompt)
        assert passes == expected
    # headway 2: two positions enter a pass, the wavefront fills sooner (3 + 2 passes)
    assert model.diffusion_forcing_generate(prompt, 5, headway=2)[1] == 5
    out, passes = model.diffusion_forcing_generate(prompt, 0)
    assert torch.equal(out, prompt) and passes == 0
    with pytest.raises(ValueError, match="inner_recurrence must be an int >= 1, got 0"):
        model.diffusion_forcing_generate(prompt, 2, inner_recurrence=0)
    with pytest.raises(ValueError, match="does not fit max_wavefront=2: use full_prefill"):
        model.diffusion_forcing_generate(prompt, 2, max_wavefront=2, full_prefill=False)
    with pytest.raises(ValueError, match="exit_threshold must lie in"):
        model.diffusion_forcing_generate(prompt, 2, exit_threshold=-1.0)
    with pytest.raises(ValueError, match="num_layers must equal prelude \\+ core \\+ coda = 3"):
        build_recurrent_depth(layer="mingru", vocab_size=5, num_layers=2)
