"""Stick-breaking attention (arXiv:2410.17980): fla's naive stick-breaking attention on the
layer's own tensors (whole and streamed through the cache), and the fact that each query's
weights are the stick-breaking products, written out as loops, and sum to at most 1."""

from __future__ import annotations

import pytest
import torch
from _twice import check_twice

import rnnzoo
from rnnzoo.layers.stickbreaking_attention import _Split, stick_breaking_weights
from rnnzoo.ops.native import attention as native_attention


@pytest.mark.parametrize("attend_current", [False, True])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_layer_equals_fla_naive_stickbreaking_attn(mode, attend_current):
    naive = pytest.importorskip("fla.ops.stickbreaking_attn.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("stickbreaking_attention", d_model=16, num_heads=2, max_len=32,
                          attend_current=attend_current).double()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = layer.op_inputs(x)
        o, _ = naive.naive_stickbreaking_attn(q, k, v, attend_current=attend_current)
        y_ref = layer.op_output(o, x)
        y, _ = layer(x, mode=mode)
        assert (y - y_ref).abs().max() < 1e-12 * y_ref.abs().max()
        s, parts = None, []
        for a, b in [(0, 1), (1, 8), (8, 19)]:
            y_part, s = layer(x[:, a:b], s, mode=mode)
            parts.append(y_part)
        assert (torch.cat(parts, 1) - y_ref).abs().max() < 1e-12 * y_ref.abs().max()


def test_weights_are_the_stick_breaking_products_and_sum_to_at_most_one():
    torch.manual_seed(1)
    T = 9
    z = 3 * torch.randn(2, T, T, dtype=torch.float64)
    i = torch.arange(T)
    visible = i[None, :] <= i[:, None]
    A = stick_breaking_weights(z, visible)
    beta = torch.sigmoid(z)
    for b in range(2):
        for qi in range(T):
            for j in range(T):
                expect = 0.0
                if j <= qi:
                    expect = float(beta[b, qi, j])
                    for l_ in range(j + 1, qi + 1):
                        expect *= 1 - float(beta[b, qi, l_])
                assert abs(float(A[b, qi, j]) - expect) < 1e-14
    total = A.sum(-1)
    assert (total <= 1 + 1e-14).all() and (total > 0).all()
    # the stick left over is the product of every (1 - beta): the weights and it make 1
    rest = torch.where(visible, 1 - beta, 1.0).prod(-1)
    assert (total + rest - 1).abs().max() < 1e-14


def test_options_checked():
    with pytest.raises(TypeError, match="attend_current must be a bool"):
        rnnzoo.create("stickbreaking_attention", d_model=8, attend_current=1)
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        rnnzoo.create("stickbreaking_attention", d_model=8, max_len=8)(torch.randn(1, 9, 8))



def test_split_second_derivative():
    """create_graph runs `_Split.twice` (the plain view, transposes and q's scale)."""
    lib = native_attention.load()
    if lib is None:
        pytest.skip("no C compiler")
    qkv = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    check_twice(lambda t: _Split.apply(lib, t, 2, 0.5), (qkv,))
