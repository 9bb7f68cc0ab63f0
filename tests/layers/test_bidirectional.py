"""LION (arXiv:2502.16249): every layer with a bidirectional option, in every mode, equals the
non-causal decay-masked full attention built here from its own inputs; it reads the future,
has no step, masks padding out of both directions; the default stays causal."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers.bidirectional import lion

LION_LAYERS = sorted(i.name for i in rnnzoo.list_layers() if getattr(i.cls, "lion_inputs", None) is not None)
T = 9


def make(name, **options):
    info = rnnzoo.registry.get_layer_info(name)
    opts = dict(info.tiny)
    d_model = opts.pop("d_model", 8)
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=d_model, **opts, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def masked_attention(q, k, v, g, scale, bonus=None, causal=False):
    """o_i = scale sum_j sum_c q_ic k_jc M_ijc v_j with M_ijc the product of the decays between
    i and j: exp(g_{j+1} + ... + g_i) for j <= i, exp(g_{i+1} + ... + g_j) for j > i; one loop
    per pair, no cumulative sums. With a bonus u (H, K) (RWKV-6: each step reads the state
    before its own write), M_ijc is the product of the decays strictly between i and j and
    M_iic = u_c. causal: the sum over j <= i only."""
    B, n, H, K = q.shape
    if g is None:
        g = torch.zeros(B, n, H, K, dtype=q.dtype)
    elif g.dim() == 3:
        g = g[..., None].expand(B, n, H, K)
    o = torch.zeros(B, n, H, v.shape[-1], dtype=q.dtype)
    for i in range(n):
        for j in range(i + 1 if causal else n):
            lo, hi = min(i, j), max(i, j)
            if bonus is None:
                M = g[:, lo + 1:hi + 1].sum(1).exp()                     # (B, H, K)
            else:
                M = bonus.expand(B, H, K) if i == j else g[:, lo + 1:hi].sum(1).exp()
            o[:, i] += scale * (q[:, i] * k[:, j] * M).sum(-1, keepdim=True) * v[:, j]
    return o


def test_the_lion_layers_are_the_linear_attention_family():
    assert {"linear_attention", "gla", "lightning_attention", "retnet", "hgrn2", "mamba2",
            "rwkv6", "based", "rebased", "gsa"} <= set(LION_LAYERS)
    for name in ("deltanet", "gated_deltanet", "kda", "comba", "gdn2", "rwkv7"):
        with pytest.raises(TypeError, match="bidirectional"):
            make(name, bidirectional=True)


def reference(layer, x, attend):
    """The layer's bidirectional output with each pass (two for GSA: lion_second) through
    attend(q, k, v, g, scale, bonus)."""
    q, k, v, g, scale, *bonus = layer.lion_inputs(x)
    o = attend(q, k, v, g, scale, bonus[0] if bonus else None)
    if hasattr(layer, "lion_second"):
        o = attend(*layer.lion_second(o, x), None)
    return layer.lion_output(o, x)


def diagonal(q, k, v, scale, u):
    return scale * (q * k if u is None else q * u * k).sum(-1, keepdim=True) * v


@pytest.mark.parametrize("name", LION_LAYERS)
def test_every_mode_equals_the_masked_full_attention(name):
    layer = make(name, bidirectional=True)
    x = torch.randn(2, T, layer.d_model, dtype=torch.float64)
    y_ref = reference(layer, x, masked_attention)
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert (y - y_ref).abs().max() < 1e-10 * y_ref.abs().max(), mode

    # the two recurrences count the diagonal (the bonus term where there is one) twice before
    # the correction
    def twice(q, k, v, g, scale, u):
        return lion(q, k, v, g, scale=scale, chunk=False, bonus=u) + diagonal(q, k, v, scale, u)

    assert (reference(layer, x, twice) - y_ref).abs().max() > 1e-3 * y_ref.abs().max()
    if len(layer.lion_inputs(x)) == 6:  # the correction is the bonus term, not q_i . k_i v_i
        def plain(q, k, v, g, scale, u):
            return (lion(q, k, v, g, scale=scale, chunk=False, bonus=u)
                    + diagonal(q, k, v, scale, u) - diagonal(q, k, v, scale, None))

        assert (reference(layer, x, plain) - y_ref).abs().max() > 1e-3 * y_ref.abs().max()


def test_with_a_bonus_the_lower_triangle_is_rwkv6s_causal_op_and_the_reverse_is_unshifted():
    """masked_attention's bonus convention (decays strictly between i and j, u on the diagonal)
    on j <= i is the op RWKV-6 runs causally; LION's backward pass then takes the reversed
    decays unshifted (the shift of the bonus-free case would be wrong by one step)."""
    from rnnzoo.layers.bidirectional import _shift_reverse
    from rnnzoo.ops.chunk.linear import gated_linear_attention_recurrent as recurrent
    torch.manual_seed(1)
    B, n, H, K = 1, 6, 2, 3
    q, k, v = (torch.randn(B, n, H, K, dtype=torch.float64) for _ in range(3))
    g = -torch.rand(B, n, H, K, dtype=torch.float64)
    u = torch.randn(H, K, dtype=torch.float64)
    o_f, _ = recurrent(q, k, v, g, scale=0.5, bonus=u)
    assert (o_f - masked_attention(q, k, v, g, 0.5, u, causal=True)).abs().max() < 1e-12
    o_ref = masked_attention(q, k, v, g, 0.5, u)
    assert (lion(q, k, v, g, scale=0.5, bonus=u, chunk=False) - o_ref).abs().max() < 1e-12
    assert (lion(q, k, v, g, scale=0.5, bonus=u) - o_ref).abs().max() < 1e-12
    o_b, _ = recurrent(q.flip(1), k.flip(1), v.flip(1), _shift_reverse(g), scale=0.5, bonus=u)
    diag = 0.5 * (q * u * k).sum(-1, keepdim=True) * v
    assert (o_f + o_b.flip(1) - diag - o_ref).abs().max() > 1e-3


@pytest.mark.parametrize("name", LION_LAYERS)
def test_reads_the_future_has_no_step_and_the_default_is_causal(name):
    bi, causal = make(name, bidirectional=True), make(name)
    assert causal.bidirectional is False
    x = torch.randn(1, T, bi.d_model, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1
    assert (bi(x2)[0][:, 0] - bi(x)[0][:, 0]).abs().max() > 1e-6
    assert (causal(x2)[0][:, :-1] - causal(x)[0][:, :-1]).abs().max() == 0
    with pytest.raises(ValueError, match="bidirectional=True: its outputs read the whole sequence"):
        bi.step(x[:, 0])
    with pytest.raises(TypeError, match="bidirectional must be a bool"):
        make(name, bidirectional=1)


@pytest.mark.parametrize("name", LION_LAYERS)
def test_padding_is_masked_out_of_both_directions(name):
    """Right padding (NaN in it): valid outputs equal each sequence run alone, padded outputs 0."""
    layer = make(name, bidirectional=True)
    x = torch.randn(2, T, layer.d_model, dtype=torch.float64)
    lengths = torch.tensor([T, 5])
    xp = x.clone()
    xp[1, 5:] = float("nan")
    for mode in layer.modes:
        y, _ = layer(xp, mode=mode, lengths=lengths)
        alone, _ = layer(x[1:, :5], mode=mode)
        assert (y[1, :5] - alone[0]).abs().max() < 1e-10
        assert torch.equal(y[1, 5:], torch.zeros_like(y[1, 5:]))
        assert (y[0] - layer(x[:1], mode=mode)[0][0]).abs().max() < 1e-10


@pytest.mark.parametrize("name", LION_LAYERS)
def test_packed_documents_are_each_read_both_ways_alone(name):
    layer = make(name, bidirectional=True)
    x = torch.randn(1, 7, layer.d_model, dtype=torch.float64)
    for mode in layer.modes:
        y, _ = layer(x, mode=mode, cu_seqlens=torch.tensor([0, 3, 7]))
        for a, b in ((0, 3), (3, 7)):
            assert (y[:, a:b] - layer(x[:, a:b], mode=mode)[0]).abs().max() < 1e-10, mode
