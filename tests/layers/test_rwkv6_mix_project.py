"""RWKV-6's ddlerp mixes and projections as one autograd Function (`_MixProject`): its
hand-written gradients against torch's gradcheck and its values against the plain formulas."""

from __future__ import annotations

import torch

from rnnzoo.layers.rwkv6 import _MixProject


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_mix_project_values_and_gradcheck():
    x, dx, c, W = rand(4, 3), rand(4, 3, seed=1), rand(5, 4, 3, seed=2), rand(4, 3, 3, seed=3)
    xw, proj = _MixProject.apply(x, dx, c, W)
    mixes = [x + dx * c[i] for i in range(5)]
    assert torch.allclose(xw, mixes[0])
    assert torch.allclose(proj, torch.stack([m @ w.T for m, w in zip(mixes[1:], W)]))
    assert torch.autograd.gradcheck(_MixProject.apply, [t.requires_grad_() for t in (x, dx, c, W)])
