"""mom's chunk mode on a CPU runs each routed memory over its own tokens only (packed per
batch row and memory, right-padded with identity steps): it equals the reference loop over
every token in float64 (outputs, states, gradients), with right padding, a starting state, a
batch whose rows route different counts, and a memory that gets no token; and the delta rule
it calls sees L = the longest routed count steps, not T; on the PyTorch path (delta_rule) and
on the C recurrence (ops.native.delta_scan, which delta_rule calls on a CPU) alike."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers import mom as mom_module
from rnnzoo.ops import backend
from rnnzoo.ops.native import delta_scan


def _layer(top_k, shared, starved):
    torch.manual_seed(0)
    layer = rnnzoo.create("mom", d_model=8, num_heads=2, head_dim=3, expand_v=2, num_memories=3,
                          top_k=top_k, shared_memory=shared, d_conv=3, chunk_size=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if starved:  # scores +c u.x, -c u.x, 0: with top_k = 1 memory 2 never wins
            u = torch.randn(8, dtype=torch.float64)
            layer.router.weight.copy_(torch.stack([5 * u, -5 * u, torch.zeros_like(u)]))
    return layer


def _run(layer, x, state, mode, lengths):
    xs = x.clone().requires_grad_()
    s0 = [t.clone().requires_grad_() for t in state]
    y, (S, _) = layer(xs, tuple(s0), mode=mode, lengths=lengths)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() \
        + (S * torch.randn(S.shape, generator=g, dtype=S.dtype)).sum()
    grads = torch.autograd.grad(loss, [xs, *s0, *layer.parameters()], allow_unused=True)
    return y, S, [torch.zeros(()) if gr is None else gr for gr in grads]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("top_k,shared,starved", [(2, True, False), (1, False, True),
                                                  (1, True, True)])
def test_packed_chunk_equals_the_loop(top_k, shared, starved, native, monkeypatch):
    layer = _layer(top_k, shared, starved)
    B, T = 3, 23
    x = torch.randn(B, T, 8, dtype=torch.float64)
    S0, conv0 = layer.init_state(B, dtype=torch.float64)
    state = (0.3 * torch.randn_like(S0), 0.3 * torch.randn_like(conv0))
    lengths = torch.tensor([23, 17, 9])
    with torch.no_grad():  # the layer routes the padded input, zeros past each length
        x_in = x * (torch.arange(T)[:, None] < lengths[:, None, None])
        _, idx = layer._route(layer._gates(x_in)[2])
        chosen = torch.zeros(B, T, 3).scatter_(-1, idx, 1.0)
        counts = chosen.sum(1)                                          # (B, N)
    assert len(set(counts.flatten().tolist())) > 1            # rows and memories differ
    if starved:
        assert counts[:, 2].eq(0).all() and counts[:, :2].gt(0).all()
    seen = []
    real, ran = mom_module.MoM._delta, []

    def spy(self, q, *args, **kw):
        seen.append(tuple(q.shape))
        return real(self, q, *args, **kw)

    monkeypatch.setattr(mom_module.MoM, "_delta", spy)
    real_native = delta_scan.delta
    monkeypatch.setattr(delta_scan, "delta",
                        lambda *a: ran.append(1) or real_native(*a))
    y_ref, S_ref, g_ref = _run(layer, x, state, "sequential", lengths)
    assert seen == []
    if native:
        y, S, g = _run(layer, x, state, "chunk", lengths)
    else:
        with backend.force("torch"):
            y, S, g = _run(layer, x, state, "chunk", lengths)
    assert bool(ran) == native
    # the routed memories ran on B N sequences of the longest count, not on all T steps
    longest = int(counts.max())
    assert (B * 3, longest, 2, 3) in seen and longest < T
    assert (y - y_ref).abs().max() < 1e-12
    assert (S - S_ref).abs().max() < 1e-12
    if starved:  # a memory that got no token keeps its starting state (the full-length row)
        assert (S[0, 4:6] - state[0][0, 4:6]).abs().max() < 1e-12
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max() < 1e-10
