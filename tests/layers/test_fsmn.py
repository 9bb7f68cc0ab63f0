"""FSMN (Zhang et al. 2015): the paper's memory and output as a plain loop, and the memory's
impulse response equal to its taps."""

import pytest
import torch

import rnnzoo

F64 = torch.float64


def make(memory, d_model=3, order=4, seed=0):
    torch.manual_seed(seed)
    layer = rnnzoo.create("fsmn", d_model=d_model, order=order, memory=memory).double()
    with torch.no_grad():
        layer.taps.copy_(torch.randn_like(layer.taps))
    return layer


def oracle(layer, x, history):
    """m_t = sum_i a_i x_{t-i} (x before t = 0 from the history), y_t = W x_t + W~ m_t + b."""
    N = layer.order
    a = layer.taps.detach()
    a = a if a.dim() == 2 else a.expand(x.shape[-1], N + 1)           # (C, N + 1) by lag
    seq = torch.cat([history, x], 1)                                   # x_t = seq[:, N + t]
    W, b = layer.proj.weight.detach(), layer.proj.bias.detach()
    Wm = layer.memory_proj.weight.detach()
    ys = []
    for t in range(x.shape[1]):
        m = sum(a[:, i] * seq[:, N + t - i] for i in range(N + 1))
        ys.append(x[:, t] @ W.T + b + m @ Wm.T)
    return torch.stack(ys, 1), seq[:, -N:]


@pytest.mark.parametrize("memory", ["vector", "scalar"])
@pytest.mark.parametrize("mode", ["sequential", "conv"])
def test_matches_the_papers_equations(memory, mode):
    layer = make(memory)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 13, 3, generator=g, dtype=F64)
    history = torch.randn(2, 4, 3, generator=g, dtype=F64)
    with torch.no_grad():
        want, h_want = oracle(layer, x, history)
        got, h = layer(x, history, mode=mode)
    err = max((got - want).abs().max().item(), (h - h_want).abs().max().item())
    assert err < 1e-12, err


@pytest.mark.parametrize("memory", ["vector", "scalar"])
@pytest.mark.parametrize("mode", ["sequential", "conv"])
def test_impulse_response_is_the_filter(memory, mode):
    """With W = 0, b = 0, W~ = I the layer is the memory alone: a unit impulse in channel c
    at t = 0 gives y_t[c] = a_t[c] for t <= N, then nothing (a finite impulse response),
    and no other channel moves."""
    layer = make(memory, d_model=3, order=5)
    with torch.no_grad():
        layer.proj.weight.zero_(), layer.proj.bias.zero_()
        layer.memory_proj.weight.copy_(torch.eye(3, dtype=F64))
    a = layer.filter(F64).detach()                                    # (3, 6) by lag
    for c in range(3):
        x = torch.zeros(1, 9, 3, dtype=F64)
        x[0, 0, c] = 1
        with torch.no_grad():
            y, _ = layer(x, mode=mode)
        want = torch.zeros(9, 3, dtype=F64)
        want[:6, c] = a[c]
        assert torch.equal(y[0], want)
    if memory == "scalar":  # sFSMN: one filter for every channel
        assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])


def test_bad_options():
    with pytest.raises(ValueError, match="memory must be one of"):
        rnnzoo.create("fsmn", d_model=4, memory="matrix")
    with pytest.raises(ValueError, match="order must be a positive int"):
        rnnzoo.create("fsmn", d_model=4, order=0)
