"""liquid_s4's and s4d's conv mode: the summed causal FFT convolution with its hand-written
backward equals the direct sum y_t = sum_q sum_{l <= t} k_{q,l} u_{t-l,q}, values and
gradients; the Vandermonde matrix's hand-written backward equals autograd's through the
complex powers."""

import torch

from rnnzoo.layers.s4d import _CausalFFTConv, vandermonde


def test_summed_causal_convolution_and_its_gradients_by_hand():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 7, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    T = u.shape[1]
    want = torch.stack([sum(k[..., j] * u[:, t - j] for j in range(t + 1)).sum(-1)
                        for t in range(T)], 1)
    got = _CausalFFTConv.apply(u, k)
    assert got.shape == (2, T, 3) and got.is_contiguous() and (got - want).abs().max() < 1e-12
    dy = torch.randn(2, T, 3, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (u, k), dy), torch.autograd.grad(want, (u, k), dy)):
        assert (a - b).abs().max() < 1e-12


def test_vandermonde_gradient_by_hand_equals_the_complex_powers():
    g = torch.Generator().manual_seed(1)
    re = -torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    im = (9 * torch.randn(3, 5, generator=g, dtype=torch.float64)).requires_grad_()
    P = vandermonde(torch.complex(re, im), 23)
    want = torch.exp(torch.complex(re, im).unsqueeze(-1) * torch.arange(23, dtype=torch.float64))
    want = torch.cat([want.real, want.imag], -2)
    assert (P - want).abs().max() < 1e-12
    dP = torch.randn(3, 10, 23, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(P, (re, im), dP), torch.autograd.grad(want, (re, im), dP)):
        assert (a - b).abs().max() < 1e-10 * b.abs().max()
