"""liquid_s4's conv mode: the summed causal FFT convolution with its hand-written backward
equals the direct sum y_t = sum_q sum_{l <= t} k_{q,l} u_{q,t-l}, values and gradients."""

import torch

from rnnzoo.layers.liquid_s4 import _CausalFFTConv


def test_summed_causal_convolution_and_its_gradients_by_hand():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    T = u.shape[-1]
    want = torch.stack([sum(k[..., j] * u[..., t - j] for j in range(t + 1)).sum(-1)
                        for t in range(T)], -1)
    got = _CausalFFTConv.apply(u, k)
    assert got.shape == (2, 3, T) and (got - want).abs().max() < 1e-12
    dy = torch.randn(2, 3, T, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (u, k), dy), torch.autograd.grad(want, (u, k), dy)):
        assert (a - b).abs().max() < 1e-12
