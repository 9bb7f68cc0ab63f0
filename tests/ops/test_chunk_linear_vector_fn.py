"""The vector-decay chunk path of ops.chunk.linear (GLA, RWKV-6's bonus, HGRN2, GateLoop): its
one-block autograd Function `_VectorChunk` (hand-written gradients) against torch's gradcheck,
which of the two paths a call takes, and both against the recurrent reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _second_order import second_order

from rnnzoo.ops.chunk.linear import (
    _vector_chunk_loop,
    _vector_chunkwise,
    _VectorChunk,
    gated_linear_attention,
    gated_linear_attention_recurrent,
)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("bonus", [False, True])
def test_vector_chunk_function_passes_gradcheck(bonus):
    B, H, N, C, K, V = 1, 2, 2, 3, 2, 2
    q, k, v = rand(B, H, N, C, K), rand(B, H, N, C, K, seed=1), rand(B, H, N, C, V, seed=2)
    g = F.logsigmoid(rand(B, H, N, C, K, seed=3))
    S0, u = rand(B, H, K, V, seed=4), (rand(H, K, seed=5) if bonus else None)
    inputs = [t.requires_grad_() for t in (q, k, v, g, S0)] + [u.requires_grad_() if bonus else None]
    assert torch.autograd.gradcheck(_VectorChunk.apply, inputs)


@pytest.mark.parametrize("bonus", [False, True])
@pytest.mark.parametrize("strength,one_block", [(0.5, True), (400.0, False)])
def test_each_path_equals_recurrent_values_and_gradients(bonus, strength, one_block):
    """Weak decays: every chunk's span under the limit, the Function runs; a span past it
    (e^300 in float64): `_vector_chunkwise` declines and the secondary chunking runs."""
    B, T, H, K, V, C = 2, 13, 2, 4, 3, 4  # T = 3 chunks and a padded one
    q, k, v = rand(B, T, H, K), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2)
    g = -strength * rand(B, T, H, K, seed=3).abs()
    S0, u = rand(B, H, K, V, seed=4), (rand(H, K, seed=5) if bonus else None)
    taken = _vector_chunkwise(q, k, v, g, S0, C, u)
    assert (taken is not None) == one_block
    inputs = [t.requires_grad_() for t in (q, k, v, g, S0)] + ([u.requires_grad_()] if bonus else [])
    w_o, w_S = rand(B, T, H, V, seed=6), rand(B, H, K, V, seed=7)

    def grads(fn, **kw):
        o, S = fn(q, k, v, g, scale=0.6, initial_state=S0, bonus=u, **kw)
        return (o, S, *torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), inputs))

    got = grads(gated_linear_attention, chunk_size=C, subchunk_size=2)
    want = grads(gated_linear_attention_recurrent)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())


def test_float32_one_block_matches_float64_reference():
    """RWKV-6-like decays in float32 with a bonus: the one-block Function's factors
    e^{-G} reach e^{span} (< e^40) and still give float32-accurate outputs and gradients."""
    B, T, H, K, V = 2, 70, 2, 8, 4
    q, k, v = rand(B, T, H, K), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2)
    g = -(rand(B, T, H, K, seed=3).abs() * 0.5)
    u = rand(H, K, seed=5)
    assert _vector_chunkwise(*(t.float() for t in (q, k, v, g)), torch.zeros(B, H, K, V), 32,
                             u.float()) is not None
    ref = [t.clone().requires_grad_() for t in (q, k, v, g)]
    o_ref, _ = gated_linear_attention_recurrent(*ref, bonus=u)
    o_ref.sum().backward()
    f32 = [t.float().requires_grad_() for t in (q, k, v, g)]
    o, _ = gated_linear_attention(*f32, bonus=u.float(), chunk_size=32)
    o.sum().backward()
    assert (o.double() - o_ref).abs().max() < 1e-4 * o_ref.abs().max()
    for a, b in zip(f32, ref):
        assert (a.grad.double() - b.grad).abs().max() < 1e-4 * b.grad.abs().max()


@pytest.mark.parametrize("bonus", [False, True])
def test_vector_chunk_function_second_derivative(bonus):
    """Under create_graph=True _VectorChunk's `twice` (the reference loop replayed over the
    saved inputs, `_vector_chunk_loop`) gives the second derivative in q, k, v, g, S0 (and u),
    float64, against a central difference and the loop's own double backward."""
    B, H, N, C, K, V = 1, 2, 2, 3, 2, 2
    q, k, v = rand(B, H, N, C, K), rand(B, H, N, C, K, seed=1), rand(B, H, N, C, V, seed=2)
    g = F.logsigmoid(rand(B, H, N, C, K, seed=3))
    S0 = rand(B, H, K, V, seed=4)
    inputs = [t.requires_grad_() for t in (q, k, v, g, S0)]
    if bonus:
        inputs.append(rand(H, K, seed=5).requires_grad_())

    def native(*t):
        return _VectorChunk.apply(*t, *([] if bonus else [None]))

    def plain(*t):
        return _vector_chunk_loop(*t, *([] if bonus else [None]))

    for a, b in zip(native(*inputs), plain(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, inputs, plain)
