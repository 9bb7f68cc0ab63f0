"""Block-Recurrent Transformer: streaming over segments, gradients through the state, its
constant size, causality, and the paper's gates."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.models.block_recurrent import Gate, build_block_recurrent


def tiny(layer="mingru", gate="fixed", **kw):
    torch.manual_seed(0)
    opts = dict(num_heads=2, max_len=64) if layer == "attention" else {}
    kw = dict(dict(layer=layer, d_model=8, num_layers=2, vocab_size=11, mlp_ratio=2.0,
                   layer_options=opts, segment_len=4, num_state=3, num_heads=2, gate=gate,
                   recurrent_layers=(1,)), **kw)
    return build_block_recurrent(**kw).double()


def tokens(B=2, T=14, seed=1):
    return torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer,gate", [("mingru", "fixed"), ("mingru", "lstm"),
                                        ("attention", "lstm")])
def test_streaming_segments_equals_one_call(layer, gate):
    model = tiny(layer, gate, num_layers=3, recurrent_layers=(0, 2))
    x = tokens()                                   # 3 segments of 4 and one of 2
    ref, ref_state = model(x)
    state, outs = None, []
    for start in range(0, 14, 4):
        y, state = model(x[:, start:start + 4], state)
        outs.append(y)
    assert (torch.cat(outs, 1) - ref).abs().max() < 1e-12
    for a, b in zip(state[1], ref_state[1]):
        assert (a - b).abs().max() < 1e-12
    # two segments a call carry it the same way
    a, s = model(x[:, :8])
    b, _ = model(x[:, 8:], s)
    assert (torch.cat([a, b], 1) - ref).abs().max() < 1e-12
    # the state matters: the last segment from a fresh state reads differently
    fresh, _ = model(x[:, 12:], (state[0], model.init_state(2, dtype=torch.float64)[1]))
    assert (fresh - ref[:, 12:]).abs().max() > 1e-4


def test_gradients_flow_through_the_state_across_segments():
    model = tiny(input_dim=3, vocab_size=None, output_dim=2)
    x1 = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 4, 3, dtype=torch.float64)
    _, (mixers, cells) = model(x1)
    detached = tuple(tuple(t.detach() for t in m) if isinstance(m, tuple) else m.detach()
                     for m in mixers)            # only the recurrent state links the segments
    y2, _ = model(x2, (detached, cells))
    y2.square().sum().backward()
    assert x1.grad is not None and x1.grad.abs().max() > 1e-8
    cell = model.blocks[1]
    assert cell.initial.grad.abs().max() > 1e-8     # the learned initial state is trained
    assert cell.gate.bias.grad.abs().max() > 1e-8
    # the same with the recurrent state cut: nothing reaches the first segment
    x1.grad = None
    _, (mixers, cells) = model(x1)
    y2, _ = model(x2, (detached, tuple(c.detach() for c in cells)))
    y2.square().sum().backward()
    assert x1.grad is None


@pytest.mark.parametrize("layer", ["mingru", "attention"])
def test_state_has_constant_size(layer):
    model = tiny(layer)
    _, s1 = model(tokens(T=4))
    _, s5 = model(tokens(T=20))
    flat = lambda s: [t.shape for t in torch.utils._pytree.tree_leaves(s)]  # noqa: E731
    assert flat(s1) == flat(s5)
    assert s5[1][0].shape == (2, 3, 8) and s5[1][0].dtype == torch.float64
    assert model.float()(tokens(T=4))[1][1][0].dtype == torch.float32


@pytest.mark.parametrize("layer", ["mingru", "attention"])
def test_causal(layer):
    model = tiny(layer)
    x = tokens()
    y, _ = model(x)
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 5) % 11         # from the middle of the second segment on
    y2, _ = model(x2)
    assert (y2[:, :6] - y[:, :6]).abs().max() < 1e-12
    assert (y2[:, 6:] - y[:, 6:]).abs().max() > 1e-4


def test_gates_are_the_papers():
    torch.manual_seed(0)
    c, z = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    fixed = Gate(4, "fixed").double()
    with torch.no_grad():
        fixed.bias.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    g = 1 / (1 + torch.exp(-fixed.bias))
    assert (fixed(c, z) - (c * g + z * (1 - g))).abs().max() < 1e-14
    lstm = Gate(4, "lstm").double()
    W, b = lstm.proj.weight, lstm.proj.bias
    i = torch.sigmoid(z @ W[:4].T + b[:4] - 1)
    f = torch.sigmoid(z @ W[4:8].T + b[4:8] + 1)
    assert (lstm(c, z) - (c * f + torch.tanh(z @ W[8:].T + b[8:]) * i)).abs().max() < 1e-14


def test_bad_options():
    with pytest.raises(ValueError, match=r"gate must be one of \['fixed', 'lstm'\], got 'nope'"):
        tiny(gate="nope")
    with pytest.raises(ValueError, match=r"recurrent_layers must be distinct layer indices in "
                                         r"\[0, 1\], got \(2,\)"):
        tiny(recurrent_layers=(2,))
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide d_model \(8\)"):
        tiny(num_heads=3)
    with pytest.raises(NotImplementedError, match="once a segment"):
        tiny().step(tokens()[:, 0])


def test_second_derivative_through_the_state_attention():
    """create_graph through the cross-attention (torch's fused SDPA backward has no derivative:
    `fused_sdpa` replays the math form): the parameters' gradient-norm penalty along a random
    direction against a central difference, float64."""
    model = tiny("mingru", "lstm")
    x = tokens()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(2)
    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]

    def penalty(create_graph):
        grads = torch.autograd.grad(model(x)[0].square().sum(), params, create_graph=create_graph)
        return sum(gr.square().sum() for gr in grads)

    hv = sum((h * d).sum() for h, d in zip(torch.autograd.grad(penalty(True), params), u))

    def shifted(e):
        with torch.no_grad():
            for p, d in zip(params, u):
                p.add_(d, alpha=e)
        try:
            return penalty(False).item()
        finally:
            with torch.no_grad():
                for p, d in zip(params, u):
                    p.sub_(d, alpha=e)

    fd = (shifted(1e-6) - shifted(-1e-6)) / 2e-6
    assert abs(hv.item() - fd) <= 1e-6 * abs(fd), (hv.item(), fd)
