"""RWKV-6 (Peng et al. 2024): ddlerp token shift and decay by hand, wkv by fla's reference."""

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.ops import backend


def test_time_mixing_equals_the_papers_equations_and_fla_naive_wkv():
    naive = pytest.importorskip("fla.ops.rwkv6.recurrent_naive", reason=(
        "flash-linear-attention (fla-core 0.6.0 + triton, .ci/install-peers) is the oracle"))
    torch.manual_seed(0)
    d, K = 8, 4
    layer = rnnzoo.create("rwkv6", d_model=d, head_dim=K, mix_rank=3, decay_rank=2,
                          chunk_size=4, subchunk_size=2).double()
    with torch.no_grad():  # the low-rank maps start at zero: move them
        for p in (layer.mix_up, layer.decay_up):
            p.normal_(0, 0.5)
    H, T = d // K, 13
    x = torch.randn(2, T, d, dtype=torch.float64)
    x_prev = F.pad(x, (0, 0, 1, 0))[:, :-1]  # token shift from the zero state
    dx = x_prev - x
    lora = torch.tanh((x + dx * layer.mu_x) @ layer.mix_down).view(2, T, 5, -1)
    mixed = [x + dx * (layer.mu[i] + lora[:, :, i] @ layer.mix_up[i]) for i in range(5)]
    xw, xk, xv, xr, xg = mixed
    w = layer.w0 + torch.tanh(xw @ layer.decay_down) @ layer.decay_up
    heads = lambda t: t.view(2, T, H, K).transpose(1, 2)  # noqa: E731
    o, _ = naive.naive_recurrent_rwkv6(heads(layer.r_proj(xr)), heads(layer.k_proj(xk)),
                                       heads(layer.v_proj(xv)), heads(-w.exp()), layer.u,
                                       scale=1.0)
    o = F.layer_norm(o.transpose(1, 2), (K,), eps=64e-5) * layer.norm.weight + layer.norm.bias
    want = layer.out_proj(o.reshape(2, T, d) * F.silu(layer.g_proj(xg)))
    for mode in layer.modes:
        assert (layer(x, mode=mode)[0] - want).abs().max() < 1e-5  # fla's reference is float32


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("rwkv6", d_model=8, head_dim=4, mix_rank=2, decay_rank=2)
    with torch.no_grad():
        y, (s, x_last) = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def test_native_head_equals_torch():
    """The C output head (ops.native.gated_norm: LayerNorm per head times silu(g)) and the
    C recurrence against the PyTorch forms, with a norm weight and bias away from 1 and 0."""
    torch.manual_seed(0)
    layer = rnnzoo.create("rwkv6", d_model=8, head_dim=4, mix_rank=2, decay_rank=2).double()
    with torch.no_grad():
        layer.norm.weight.normal_(1, 0.5)
        layer.norm.bias.normal_(0, 0.5)
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    params = [x, layer.norm.weight, layer.norm.bias, layer.g_proj.weight]

    def run():
        y = layer(x, mode="chunk")[0]
        return [y, *torch.autograd.grad((y * y.detach().sin()).sum(), params)]

    got = run()
    with backend.force("torch"):
        want = run()
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-10
