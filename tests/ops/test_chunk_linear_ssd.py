"""The scalar-decay chunk path of ops.chunk.linear (SSD, retention, no decay): its autograd
Function's hand-written gradients against the recurrent reference and torch's gradcheck, and
`ssd`, whose q and k are shared by groups of heads (Mamba-2's n_groups)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _second_order import second_order

from rnnzoo.ops.chunk.linear import _scalar_chunkwise, gated_linear_attention_recurrent, ssd


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("groups,per_group", [(2, 3), (1, 4), (3, 1)])
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("use_state", [True, False])
def test_ssd_values_and_gradients_equal_recurrent(groups, per_group, decay, use_state):
    B, T, K, V, H = 2, 11, 5, 4, groups * per_group  # T = 2 chunks of 4 and a padded one
    q, k = rand(B, T, groups, K), rand(B, T, groups, K, seed=1)
    v, S0 = rand(B, T, H, V, seed=2), rand(B, H, K, V, seed=3)
    g = F.logsigmoid(rand(B, T, H, seed=4) + 1) if decay else torch.zeros(B, T, H,
                                                                           dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v, g, S0)]
    o, S = ssd(q, k, v, g, scale=0.7, initial_state=S0, chunk_size=4)
    heads = lambda t: t.repeat_interleave(per_group, 2)  # noqa: E731
    o_ref, S_ref = gated_linear_attention_recurrent(heads(q), heads(k), v, g, scale=0.7,
                                                    initial_state=S0)
    assert err(o, o_ref) < 1e-12 and err(S, S_ref) < 1e-12
    w_o, w_S = rand(*o.shape, seed=5), rand(*S.shape, seed=6)
    loss = lambda o, S: (o * w_o).sum() + ((S * w_S).sum() if use_state else 0)  # noqa: E731
    got = torch.autograd.grad(loss(o, S), inputs)
    want = torch.autograd.grad(loss(o_ref, S_ref), inputs)
    for a, b in zip(got, want):
        assert err(a, b) < 1e-11


def test_scalar_chunk_function_passes_gradcheck():
    B, T, G, R, K, V = 1, 6, 1, 2, 3, 2
    q, k = rand(B, T, G, K), rand(B, T, G, K, seed=1)
    v, S0 = rand(B, T, G * R, V, seed=2), rand(B, G * R, K, V, seed=3)
    g = F.logsigmoid(rand(B, T, G * R, seed=4))
    run = lambda q, k, v, g, S0: _scalar_chunkwise(q, k, v, g, S0, 4)  # noqa: E731
    assert torch.autograd.gradcheck(run, [t.requires_grad_() for t in (q, k, v, g, S0)])


def test_ssd_without_initial_state_and_in_float32():
    q, k, v = rand(2, 9, 1, 4).float(), rand(2, 9, 1, 4, seed=1).float(), rand(2, 9, 2, 3).float()
    g = -rand(2, 9, 2, seed=2).abs().float()
    o, S = ssd(q, k, v, g, chunk_size=4)
    o_ref, S_ref = gated_linear_attention_recurrent(q.expand(2, 9, 2, 4), k.expand(2, 9, 2, 4), v, g)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert err(o, o_ref) < 1e-5 and err(S, S_ref) < 1e-5


def test_ssd_bad_shapes_raise():
    q, v, g = rand(1, 5, 2, 3), rand(1, 5, 3, 4), rand(1, 5, 3)
    with pytest.raises(ValueError, match="multiple of G"):
        ssd(q, q, v, g)  # 3 heads, 2 groups
    with pytest.raises(ValueError, match="log_decay"):
        ssd(q, q, rand(1, 5, 4, 4), g)
    with pytest.raises(ValueError, match="initial_state"):
        ssd(q, q, rand(1, 5, 4, 4), rand(1, 5, 4), initial_state=rand(1, 4, 3, 3))


def test_scalar_chunk_function_second_derivative():
    """Under create_graph=True _ScalarChunk's `twice` (the reference loop replayed over the
    saved inputs, `_scalar_chunk_loop`) gives the second derivative in q, k, v, g and S0, two
    heads sharing q and k, a padded chunk; float64, against a central difference and the
    loop's own double backward."""
    B, T, G, R, K, V = 1, 6, 1, 2, 3, 2
    q, k = rand(B, T, G, K), rand(B, T, G, K, seed=1)
    v, S0 = rand(B, T, G * R, V, seed=2), rand(B, G * R, K, V, seed=3)
    g = F.logsigmoid(rand(B, T, G * R, seed=4))
    inputs = [t.requires_grad_() for t in (q, k, v, g, S0)]

    def native(q, k, v, g, S0):
        return _scalar_chunkwise(q, k, v, g, S0, 4)

    def plain(q, k, v, g, S0):
        return gated_linear_attention_recurrent(q.repeat_interleave(R, 2), k.repeat_interleave(R, 2),
                                                v, g, scale=1, initial_state=S0)

    for a, b in zip(native(*inputs), plain(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, inputs, plain)
