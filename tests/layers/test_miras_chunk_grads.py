"""Miras' chunk form (ops/memory.miras_chunked) against its token-by-token reference in
float64, with gradients: every attentional bias and retention, both memory depths, a
random starting state whose gradient point differs from the memory and sequences at
different places in their chunk, and the per-step weights read a group of chunks at a time."""

from __future__ import annotations

import pytest
import torch
from _miras_loop import setup

from rnnzoo.ops import memory
from rnnzoo.ops.memory import miras_chunked, miras_sequential

LAYERS = [("moneta", 2), ("memora", 1), ("yaad", 2)]


@pytest.mark.parametrize("name,depth", LAYERS, ids=[f"{n}-{d}" for n, d in LAYERS])
def test_chunk_gradients_equal_the_reference(name, depth, monkeypatch):
    monkeypatch.setattr(memory, "GROUP", 1)          # one chunk per group of per-step weights
    layer, tensors, init, mem = setup(name, memory_depth=depth, base_lr=4.0)
    torch.manual_seed(1)
    tensors = [t.detach().requires_grad_() for t in tensors]
    init = [u.clone().requires_grad_() for u in init]
    state = [0.3 * torch.randn_like(t).requires_grad_() for t in mem[:-1]]
    n = torch.tensor([1.0, 4.0], dtype=torch.float64)    # mid-chunk, and a full chunk to roll
    outs = []
    for op in (miras_sequential, miras_chunked):
        z, s = op(layer.kind, *tensors, 4, init, (*state, n), *layer.rules())
        w = [torch.randn_like(t, generator=torch.Generator().manual_seed(i))
             for i, t in enumerate((z, *s[:-1]))]
        loss = sum((a * b).sum() for a, b in zip(w, (z, *s[:-1])))
        wrt = [*tensors, *init, *state]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)   # delta: yaad's alone
        outs.append((z, s, [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]))
    (z0, s0, g0), (z1, s1, g1) = outs
    assert (z0 - z1).abs().max() < 1e-10
    assert max((a - b).abs().max() for a, b in zip(s0, s1)) < 1e-10
    assert max((a - b).abs().max() for a, b in zip(g0, g1)) < 1e-9
    assert max(g.abs().max() for g in g1) > 1e-3       # the gradients are not all zero
