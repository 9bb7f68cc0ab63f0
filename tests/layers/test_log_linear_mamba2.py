"""Log-linear Mamba-2 (arXiv:2506.04761): fla's naive log-linear attention on the layer's own
tensors; the decoding state holds popcount(T) <= log2(T) + 1 live Fenwick buckets; with all
level weights equal to 1 the layer is Mamba-2 on the same parameters."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo
from rnnzoo.ops.log_linear import (
    log_linear_attention,
    log_linear_attention_parallel,
    log_linear_attention_recurrent,
)

OPS = {"recurrent": log_linear_attention_recurrent,
       "chunk": lambda *a, **kw: log_linear_attention(*a, chunk_size=8, **kw),
       "parallel": log_linear_attention_parallel}


def _perturbed(layer, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def test_layer_equals_fla_naive_log_linear_attn():
    """The block's q, k, v, log decay and level weights through fla-core 0.6.0's
    naive_log_linear_attn (the paper's H o QK^T), then the block's output: equal to every
    mode of the layer. T = 24 needs ceil(log2 24) + 1 = 6 levels."""
    naive = pytest.importorskip("fla.ops.log_linear_attn.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    layer = _perturbed(rnnzoo.create("log_linear_mamba2", d_model=8, d_state=4, head_dim=4,
                                     chunk_size=8, num_levels=6))
    from peers.fla_log_linear import log_linear_mamba2_with_fla
    x = torch.randn(2, 24, 8)
    buckets, count, conv = layer.init_state(2)
    q, k, v, g, lam, rest = layer.op_inputs(x, conv)
    assert lam.std() > 0.01                 # the level weights differ (not Mamba-2 in disguise)
    with torch.no_grad():
        y_fla = layer.op_output(naive.naive_log_linear_attn(q, k, v, g, lam, scale=1.0), x, rest)
        assert torch.equal(log_linear_mamba2_with_fla(layer, x), y_fla)   # the bench peer
        print(f"max |layer - fla naive|: "
              f"{max((layer(x, mode=m)[0] - y_fla).abs().max().item() for m in layer.modes):.2e}")
        for mode in layer.modes:
            y, _ = layer(x, mode=mode)
            assert (y - y_fla).abs().max() < 1e-5 * y_fla.abs().max(), mode


@pytest.mark.parametrize("name", list(OPS))
def test_ops_equal_fla_naive_in_float64(name):
    """The op alone, float64, random level weights and decays, T = 37 (7 levels)."""
    naive = pytest.importorskip("fla.ops.log_linear_attn.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(1)
    B, T, H, K, V = 2, 37, 3, 4, 5
    L = math.ceil(math.log2(T)) + 1
    q, k = torch.randn(2, B, T, H, K, dtype=torch.float64)
    v = torch.randn(B, T, H, V, dtype=torch.float64)
    g = -torch.rand(B, T, H, dtype=torch.float64)
    lam = torch.rand(B, T, H, L, dtype=torch.float64)
    ref = naive.naive_log_linear_attn(q, k, v, g, lam, scale=0.7)
    y, (S, count) = OPS[name](q, k, v, g, lam, scale=0.7)
    assert (y - ref).abs().max() < 1e-12
    assert count.tolist() == [T, T]


@pytest.mark.parametrize("name", ["chunk", "parallel"])
def test_carried_state_and_saturated_top_level_match_the_binary_counter(name):
    """Three levels only (the top one saturates after 2 steps), a random initial state with
    a different count per sequence, the sequence cut in two: the chunk and parallel forms
    (levels from msb(a_t XOR a_s)) give the binary-counter loop's outputs and buckets."""
    torch.manual_seed(2)
    B, T, H, K, V, L = 3, 29, 2, 3, 2, 3
    q, k = torch.randn(2, B, T, H, K, dtype=torch.float64)
    v = torch.randn(B, T, H, V, dtype=torch.float64)
    g = -torch.rand(B, T, H, dtype=torch.float64)
    lam = torch.rand(B, T, H, L, dtype=torch.float64)
    s0 = (torch.randn(B, H, L - 1, K, V, dtype=torch.float64),
          torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64))
    y_ref, (S_ref, n_ref) = log_linear_attention_recurrent(q, k, v, g, lam, initial_state=s0)
    op, cut = OPS[name], 11
    y1, s1 = op(q[:, :cut], k[:, :cut], v[:, :cut], g[:, :cut], lam[:, :cut], initial_state=s0)
    y2, (S, n) = op(q[:, cut:], k[:, cut:], v[:, cut:], g[:, cut:], lam[:, cut:],
                    initial_state=s1)
    assert (torch.cat([y1, y2], 1) - y_ref).abs().max() < 1e-12
    assert (S - S_ref).abs().max() < 1e-12
    assert n.tolist() == n_ref.tolist() == [(c + T) % 4 for c in (0, 1, 3)]


def test_decoding_state_grows_as_log_T():
    """k = v = 1, no decay, 14 levels (exact Fenwick buckets up to 2^13 steps): after T
    steps bucket l holds the 2^(l-1) tokens of bit l - 1 of T and nothing else, so the live
    (non-empty) stored states number popcount(T) <= floor(log2 T) + 1, for every T up to
    4096 (1 at T = 2^j, j at T = 2^j - 1)."""
    L, T = 14, 4096
    ones = torch.ones(1, T, 1, 1, dtype=torch.float64)
    lam = torch.ones(1, T, 1, L, dtype=torch.float64)
    state, live = None, {}
    for t in range(T):                      # one step at a time, as decoding runs
        sl = slice(t, t + 1)
        _, state = log_linear_attention_recurrent(ones[:, sl], ones[:, sl], ones[:, sl],
                                                  None, lam[:, sl], initial_state=state)
        buckets, count = state
        sizes = buckets[0, 0, :, 0, 0]
        n = t + 1
        expected = torch.tensor([float(n >> b & 1) * 2 ** b for b in range(L - 1)],
                                dtype=torch.float64)
        assert torch.equal(sizes, expected), n
        live[n] = int((sizes != 0).sum())
        assert live[n] == bin(n).count("1") <= math.floor(math.log2(n)) + 1
        assert count.item() == n
    assert [live[2 ** j] for j in range(13)] == [1] * 13
    assert [live[2 ** j - 1] for j in range(1, 13)] == list(range(1, 13))
    assert max(live.values()) == 12


def test_layer_step_state_counts_live_buckets():
    """Decoding through the layer's `step`: after t steps exactly the slots of t's set bits
    are non-empty (the state is (buckets, count, conv) of fixed size)."""
    layer = _perturbed(rnnzoo.create("log_linear_mamba2", d_model=8, d_state=4, head_dim=4,
                                     num_levels=7))
    x = torch.randn(1, 40, 8)
    state = layer.init_state(1)
    shape = state[0].shape
    with torch.no_grad():
        for t in range(40):
            _, state = layer.step(x[:, t], state)
            buckets, count, _ = state
            assert buckets.shape == shape and count.item() == t + 1
            live = [bool(buckets[0, :, s].abs().sum() > 0) for s in range(6)]
            assert live == [bool((t + 1) >> b & 1) for b in range(6)], t + 1


def test_equal_level_weights_are_mamba2():
    """With lambda = 1 at every level (level_proj weight 0, bias softplus^-1(1)) and
    Mamba-2's parameters copied over, the layer is Mamba-2 in every mode, also past the
    top level's saturation (T = 40 > 2^(4 - 1)); with lambda = 2 the op doubles Mamba-2's."""
    torch.manual_seed(3)
    kw = dict(d_model=8, d_state=4, head_dim=4, chunk_size=8, n_groups=2)
    ll = _perturbed(rnnzoo.create("log_linear_mamba2", num_levels=4, **kw))
    m2 = rnnzoo.create("mamba2", **kw)
    with torch.no_grad():
        ll.level_proj.weight.zero_()
        ll.level_proj.bias.fill_(math.log(math.e - 1))
        m2.load_state_dict({n: p for n, p in ll.state_dict().items()
                            if not n.startswith("level_proj")})
        x = torch.randn(2, 40, 8)
        y_ref, _ = m2(x, mode="sequential")
        for mode in ll.modes:
            y, _ = ll(x, mode=mode)
            assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max(), mode
        # the op: lambda = 2 everywhere gives twice gated linear attention
        from rnnzoo.ops.chunk.linear import gated_linear_attention_recurrent
        q, k = torch.randn(2, 2, 20, 2, 3, dtype=torch.float64)
        v = torch.randn(2, 20, 2, 4, dtype=torch.float64)
        g = -torch.rand(2, 20, 2, dtype=torch.float64)
        gla, _ = gated_linear_attention_recurrent(q, k, v, g, scale=1.0)
        for op in OPS.values():
            y, _ = op(q, k, v, g, torch.full((2, 20, 2, 5), 2.0, dtype=torch.float64), scale=1.0)
            assert (y - 2 * gla).abs().max() < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match=r"num_levels must lie in \[2, 25\], got 1"):
        rnnzoo.create("log_linear_mamba2", d_model=8, head_dim=4, num_levels=1)
    with pytest.raises(ValueError, match="level_weights needs at least 2 levels"):
        log_linear_attention_recurrent(*torch.randn(3, 1, 2, 1, 2), None, torch.ones(1, 2, 1, 1))


def test_fresh_state_equals_init_state():
    """No state given: the buckets are one zero expanded (no zeros written); the outputs,
    final state and gradients equal a run from `init_state`'s zeros."""
    torch.manual_seed(0)
    layer = rnnzoo.create("log_linear_mamba2", d_model=8, d_state=4, head_dim=4, d_conv=3,
                          chunk_size=4, num_levels=4).double()
    x = torch.randn(2, 11, layer.d_model, dtype=torch.float64, requires_grad=True)
    runs = []
    for state in (None, layer.init_state(2, dtype=torch.float64)):
        y, st = layer(x, state, mode="chunk")
        gx, = torch.autograd.grad((y * y).sum() + sum((s * s).sum() for s in st), x)
        runs.append([y, *st, gx])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
