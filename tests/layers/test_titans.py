"""Titans' long-term memory (arXiv:2501.00663): fla-core's naive Titans (sequential and
chunked) on the layer's own tensors; without momentum and forgetting the memory is plain online
gradient descent (the delta rule at chunk size 1, mini-batch gradient descent in closed form
for larger chunks)."""

from __future__ import annotations

import pytest
import torch
from _twice import check_layer_twice

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.chunk.delta import delta_rule
from rnnzoo.ops.memory import layer_norm, titans_chunked, titans_sequential

OPS = [titans_sequential, titans_chunked]


def perturbed(**options):
    torch.manual_seed(0)
    layer = rnnzoo.create("titans", **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def tensors(layer, x):
    *mem, conv = layer.init_state(x.shape[0], dtype=x.dtype)
    return (*layer.op_inputs(x, conv)[:-1], tuple(mem))


def test_equals_fla_naive_titans():
    """fla-core 0.6.0's titans_linear and chunk_titans_linear (a linear memory read as
    z + LN(z), with momentum and decay, gradients at the chunk start). Its LN gradient is
    written (D g - sum g / (std D) - ...) where (D g - sum g - ...) / (std D) is meant; the
    two agree when std = 1 / D, so the memory starts from M_0 = u 1^T (k M_0 has equal
    entries: zero variance) with eps = 1 / D^2, in one chunk (every gradient at M_0). Our
    theta is fla's 2 theta (the halved loss)."""
    naive = pytest.importorskip("fla.ops.titans.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    K, T = 4, 8
    layer = perturbed(d_model=8, num_heads=2, head_dim=K, chunk_size=T, inner_norm=True,
                      norm_eps=1 / K ** 2)
    with torch.no_grad():
        layer.memory[0].zero_()
    x = torch.randn(2, T, 8, dtype=torch.float64)
    q, k, v, theta, alpha, eta, mem = tensors(layer, x)
    init, w, b = layer.op_args(torch.float64)
    M0 = torch.randn(2, 2, K, 1, dtype=torch.float64).expand(2, 2, K, K).contiguous()
    mem = (M0, mem[1], M0, *mem[3:])
    tr = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731  (B, T, H, ...) -> (B, H, T, ...)
    gates = [tr(g[..., None]) for g in (theta / 2, alpha, eta)]
    with torch.no_grad():
        o_seq, M_seq = naive.titans_linear(tr(q), tr(k), tr(v), w, b, *gates, layer.norm_eps,
                                           T, M0.clone(), True)
        o_chk, M_chk = naive.chunk_titans_linear(tr(q), tr(k), tr(v), w, b, *gates,
                                                 layer.norm_eps, T, M0.clone(), True)
        for op in OPS:
            z, state = op("linear", q, k, v, theta, alpha, eta, T, init, mem, w, b,
                          layer.norm_eps, True, False)
            ours = tr(z + layer_norm(z, w, b, layer.norm_eps)[0])
            for o_fla, M_fla in ((o_seq, M_seq), (o_chk, M_chk)):
                assert (ours - o_fla).abs().max() < 1e-5 * o_fla.abs().max()
                assert (state[2] - M_fla).abs().max() < 1e-5 * M_fla.abs().max()
    assert (state[2] - M0).abs().max() > 1e-2                # the memory did learn


@pytest.mark.parametrize("op", OPS, ids=["sequential", "chunk"])
def test_without_momentum_and_forgetting_it_is_online_gradient_descent(op):
    """alpha = eta = 0, a linear weight-only memory, no inner norm: at chunk size 1,
    M_t = M_t-1 - theta_t k_t (k_t^T M_t-1 - v_t^T), the delta rule with beta = theta
    (ops.chunk.delta_rule); at chunk size 4, mini-batch gradient descent in closed form,
    M_t = M_0 - sum_{s <= t in the chunk} theta_s k_s (k_s^T M_0 - v_s^T)."""
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=4, base_lr=1.5)
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    q, k, v, theta, alpha, eta, mem = tensors(layer, x)
    init, w, b = layer.op_args(torch.float64)
    zero = torch.zeros_like(alpha)
    with torch.no_grad():
        z, _ = op("linear", q, k, v, theta, zero, zero, 1, init, mem, w, b, 1e-6, False, False)
        o, _ = delta_rule(q, k, v, theta, scale=1.0, chunk_size=4,
                          initial_state=init[0].expand(2, -1, -1, -1))
        assert (z - o).abs().max() < 1e-12
        z, _ = op("linear", q, k, v, theta, zero, zero, 4, init, mem, w, b, 1e-6, False, False)
    M, zs = init[0].expand(2, -1, -1, -1), []
    for c in range(3):
        s = slice(4 * c, 4 * c + 4)
        kc, vc, tc = k[:, s], v[:, s], theta[:, s]
        err = torch.einsum("bthk,bhkv->bthv", kc, M) - vc
        steps = torch.einsum("bth,bthk,bthv->bthkv", tc, kc, err).cumsum(1)
        Mt = M[:, None] - steps                                  # (B, 4, H, K, V)
        zs.append(torch.einsum("bthk,bthkv->bthv", q[:, s], Mt))
        M = Mt[:, -1]
    assert theta.max() > 0.7
    assert (z - torch.cat(zs, 1)).abs().max() < 1e-12


def test_momentum_carries_surprise_and_forgetting_erases():
    """With eta = 1 and theta = 0 after a first write, the surprise keeps moving the memory
    (M_t = M_t-1 + S); with alpha = 1 the memory is only the current surprise."""
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=1)
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    q, k, v, theta, alpha, eta, mem = tensors(layer, x)
    init, w, b = layer.op_args(torch.float64)
    theta = torch.cat([theta[:, :1], torch.zeros_like(theta[:, 1:])], 1)
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    for op in OPS:
        _, st = op("linear", q, k, v, theta, zero, one, 1, init, mem, w, b, 1e-6, False, False)
        _, s1 = op("linear", q[:, :1], k[:, :1], v[:, :1], theta[:, :1], zero[:, :1],
                   one[:, :1], 1, init, mem, w, b, 1e-6, False, False)
        S1 = s1[4]
        assert S1.abs().max() > 1e-3
        assert (st[2] - 5 * S1).abs().max() < 1e-12          # M_5 = 5 S_1 (as change)
        _, sa = op("linear", q, k, v, theta, one, one, 1, init, mem, w, b, 1e-6, False, False)
        assert (sa[2] - S1).abs().max() < 1e-12              # forgotten but the surprise


def test_options_checked():
    with pytest.raises(ValueError, match="memory_depth"):
        rnnzoo.create("titans", d_model=8, memory_depth=3)
    with pytest.raises(ValueError, match="chunk_size"):
        rnnzoo.create("titans", d_model=8, chunk_size=0)


def test_bench_baseline_runs_the_same_block():
    """The bench's fla baseline (benchmarks/peers/fla_titans.py) feeds the layer's tensors to
    fla's chunked Titans: in the case fla is exact (one chunk, zero initial memory, so every
    gradient is at M = 0 where LN's input is constant) fla's read is z + LN(z) of the
    layer's z, which the baseline puts through the rest of the block in z's place."""
    pytest.importorskip("fla.ops.titans.naive", reason="fla-core 0.6.0 (see .ci/install-peers)")
    from peers import fla_titans
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=8, inner_norm=True,
                      norm_eps=1 / 16).float()
    with torch.no_grad():
        layer.memory[0].zero_()
        x = torch.randn(2, 8, 8)
        y_fla = fla_titans.titans_with_fla(layer, x)
        q, k, v, theta, alpha, eta, mem = tensors(layer, x)
        init, w, b = layer.op_args(torch.float32)
        z, _ = titans_chunked("linear", q, k, v, theta, alpha, eta, 8, init, mem, w, b,
                              layer.norm_eps, True, False)
        y = layer.op_output(z + layer_norm(z, w, b, layer.norm_eps)[0], q, x)
    assert (y - y_fla).abs().max() < 1e-4 * y.abs().max()


# -- the blocks of section 4: memory as a gate (MAG), memory as a layer (MAL) -----------------
def block_and_parts(block, d_conv=4):
    """A perturbed `titans_<block>` (2 persistent tokens, window 3) and, loaded with its
    weights, the plain `titans` memory layer and the sliding-window `attention` layer."""
    torch.manual_seed(0)
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=4, window=3,
                      num_persistent=2, block=block, d_conv=d_conv)
    memory = rnnzoo.create("titans", d_model=8, num_heads=2, head_dim=4, chunk_size=4,
                           d_conv=d_conv).double()
    missing, unexpected = memory.load_state_dict(layer.state_dict(), strict=False)
    assert not missing and all(k.split(".")[0] in ("attn", "persistent", "gate_norm", "retrieve_proj")
                               for k in unexpected)
    attn = rnnzoo.create("attention", d_model=8, num_heads=2, window=3, max_len=3).double()
    attn.load_state_dict(layer.attn.state_dict())
    return layer, memory, attn


def run_all(layer, x):
    """Outputs of the layer's modes and of step by step."""
    ys = [layer(x, mode=m)[0] for m in layer.modes]
    s, steps = None, []
    for t in range(x.shape[1]):
        y_t, s = layer.step(x[:, t], s)
        steps.append(y_t)
    return [*ys, torch.stack(steps, 1)]


def test_mal_is_the_memory_then_sliding_window_attention_over_the_persistent_prefix():
    """MAL: o = SWA(M(x~)), x~ = [p || x]: the plain memory layer and the attention layer run by
    hand on the concatenated sequence, the persistent tokens' outputs dropped."""
    layer, memory, attn = block_and_parts("mal")
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        xt = torch.cat([layer.persistent.expand(2, -1, -1), x], 1)
        want = attn(memory(xt)[0])[0][:, 2:]
        got = run_all(layer, x)
        without_p = attn(memory(x)[0])[0]
    for y in got:
        assert (y - want).abs().max() < 1e-12
    assert (want - without_p).abs().max() > 1e-3        # the persistent tokens matter


def test_mag_gates_the_sliding_window_attention_with_the_memory():
    """MAG: o = n_y(SWA(x~)) * sigmoid(n_m(M(x~))), the two branches run by hand on
    [p || x] (n: RMS norm with the learned vector weights)."""
    layer, memory, attn = block_and_parts("mag")
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        xt = torch.cat([layer.persistent.expand(2, -1, -1), x], 1)
        y, m = attn(xt)[0][:, 2:], memory(xt)[0][:, 2:]
        w = layer.gate_norm
        rms = lambda t, g: g * t / (t.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()  # noqa: E731
        want = rms(y, w[0]) * torch.sigmoid(rms(m, w[1]))
        got = run_all(layer, x)
    for o in got:
        assert (o - want).abs().max() < 1e-12
    assert (got[0] - rms(y, w[0])).abs().max() > 1e-3   # the memory's gate acts


def test_block_registered_names_are_the_option():
    a, b = rnnzoo.create("titans_mag", d_model=8), rnnzoo.create("titans", d_model=8, block="mag")
    assert a.block == b.block == "mag" and a.extra_repr() == b.extra_repr()
    assert rnnzoo.create("titans_mal", d_model=8).block == "mal"


def test_block_options_checked():
    with pytest.raises(ValueError, match="block"):
        rnnzoo.create("titans", d_model=8, block="mat")
    with pytest.raises(ValueError, match="num_persistent"):
        rnnzoo.create("titans", d_model=8, num_persistent=2)
    with pytest.raises(ValueError, match="window"):
        rnnzoo.create("titans_mag", d_model=8, window=0)


# -- memory as context (MAC) -------------------------------------------------------------------
def test_mac_is_segment_attention_over_persistent_tokens_and_retrieval_then_the_memory():
    """MAC, written out segment by segment with the plain layers: the retrieval h = M_seg(W_Q x)
    reads the memory the segment started with (a linear memory: q (W_0 + M)), a fresh
    attention reads [p, h_1, x_1, ..., h_C, x_C] (y: its outputs at the x's), the memory layer
    learns from y (chunk = segment) and o = n_y(y) * sigmoid(n_m(M(y)))."""
    layer, memory, attn = block_and_parts("mac")
    attn = rnnzoo.create("attention", d_model=8, num_heads=2, max_len=2 + 8).double()
    attn.load_state_dict(layer.attn.state_dict())
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    p = layer.persistent.expand(2, -1, -1)
    outs, mem = [], memory.init_state(2, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, 10, 4):
            xs = x[:, s:s + 4]
            q = torch.nn.functional.normalize(
                layer.retrieve_proj(xs).view(2, -1, 2, 4), dim=-1, eps=1e-6)
            W = memory.memory[0] + mem[2]           # (B, H, K, K): M (mem: M', M, S, n) at the start
            h = memory.op_output(torch.einsum("bthk,bhkv->bthv", q, W), q, xs)
            seq = torch.stack([h, xs], 2).flatten(1, 2)         # h_1, x_1, h_2, x_2, ...
            y = attn(torch.cat([p, seq], 1))[0][:, 2 + 1::2]
            m, mem = memory(y, mem)
            outs.append(layer.gate(y, m))
        want = torch.cat(outs, 1)
        got = run_all(layer, x)
    for o in got:
        assert (o - want).abs().max() < 1e-12


def test_mac_segments_meet_only_through_the_memory():
    """The attention restarts every segment: with the memory's rate at 0 (theta = 0) a change
    in the first segment leaves the second one's outputs exactly as they were; with the
    learned rate the memory carries it over. (No short convolution: it would carry the last
    d_conv - 1 tokens of y across the boundary.)"""
    layer, _, _ = block_and_parts("mac", d_conv=1)
    x = torch.randn(1, 8, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :4] += 1
    with torch.no_grad():
        changed = (layer(x)[0] - layer(x2)[0]).abs().amax((0, 2))
        assert changed[4:].min() > 1e-6
        layer.gate_proj.bias[:2] = -1e4                       # sigmoid: theta exactly 0
        changed = (layer(x)[0] - layer(x2)[0]).abs().amax((0, 2))
    assert changed[:4].min() > 1e-3 and changed[4:].max() == 0


def test_mac_chunk_resumes_each_sequence_at_its_own_place_in_its_segment():
    """The chunk form cuts at each sequence's segment ends: from states 1 and 3 steps into a
    segment (one batch), it equals the token-by-token reference."""
    layer, _, _ = block_and_parts("mac")
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        _, s1 = layer(x[:1, :1])
        _, s3 = layer(x[1:, :3])
        s0 = tuple(torch.cat(p) for p in zip(s1, s3))
        y, s = layer(x, s0, mode="chunk")
        y_ref, s_ref = layer(x, s0, mode="sequential")
    assert (y - y_ref).abs().max() < 1e-12
    assert max((a - b).abs().max() for a, b in zip(s, s_ref)) < 1e-12


@pytest.mark.parametrize("memory_bias", [False, True])
def test_linear_chunk_form_with_bias_and_mid_chunk_states_equals_the_loop(memory_bias):
    """The linear memory's chunk form (chunk gradients linear in the chunk-start memory, the
    memory weights stacked with their bias) against the loop in float64: a learning bias,
    a random starting state whose gradient point M' differs from M, each sequence at its
    own place in its chunk (n = 0, 2, C), outputs and every state tensor."""
    C = 3
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=C, memory_bias=memory_bias)
    x = torch.randn(3, 11, 8, dtype=torch.float64)
    state = layer.init_state(3, dtype=torch.float64)
    mem = [torch.randn_like(t) for t in state[:6]]
    n = torch.tensor([0.0, 2.0, C], dtype=torch.float64)
    state = (*mem, n, *state[7:])
    with torch.no_grad():
        y_seq, s_seq = layer(x, state, mode="sequential")
        y_chk, s_chk = layer(x, state, mode="chunk")
    assert (y_seq - y_chk).abs().max() < 1e-10
    for a, b in zip(s_seq, s_chk):
        assert (a - b).abs().max() < 1e-10
    assert (s_chk[3] - mem[3]).abs().max() > 1e-3 or not memory_bias   # the bias learned


def test_weight_only_chunk_form_with_zero_bias_rows_equals_the_loop():
    """A weight-only memory whose state's bias rows are zero takes the chunk form's K-wide
    path (no bias row): random weights, M' != M, each sequence at its own place in its
    chunk; outputs, every state tensor (the bias rows stay zero) and the gradients."""
    C = 3
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=C)
    x = torch.randn(3, 11, 8, dtype=torch.float64, requires_grad=True)
    state = layer.init_state(3, dtype=torch.float64)
    mem = [torch.randn_like(t) if i % 2 == 0 else t for i, t in enumerate(state[:6])]
    n = torch.tensor([0.0, 2.0, C], dtype=torch.float64)
    state = (*mem, n, *state[7:])
    out = {}
    for mode in ("sequential", "chunk"):
        y, s = layer(x, state, mode=mode)
        out[mode] = (y, s, torch.autograd.grad((y ** 2).sum() + s[2].sum(), x)[0])
    (y_seq, s_seq, g_seq), (y_chk, s_chk, g_chk) = out.values()
    assert (y_seq - y_chk).abs().max() < 1e-10
    assert (g_seq - g_chk).abs().max() < 1e-10
    for a, b in zip(s_seq, s_chk):
        assert (a - b).abs().max() < 1e-10
    assert all(not s_chk[i].any() for i in (1, 3, 5))


@pytest.mark.parametrize("num_persistent", [0, 2])
def test_mac_aligned_chunk_equals_the_steps_with_gradients(num_persistent):
    """A batch at a segment's start takes MAC's aligned chunk form (the segment loop cut to
    memory -> retrieval -> attention -> memory, composed products): outputs, final state and
    every gradient equal token by token, for a last segment cut short (T = 10, C = 4) and
    again from the state after a whole number of segments (n = C: the next piece opens a
    fresh segment too)."""
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, chunk_size=4, block="mac",
                      num_persistent=num_persistent)
    params = [p for p in layer.parameters() if p.requires_grad]
    x = torch.randn(3, 10, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        _, s8 = layer(x[:, :8], mode="sequential")
    for x_in, state in ((x, None), (x, s8)):
        outs = [layer(x_in, state, mode=m) for m in ("chunk", "sequential")]
        grads = [torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype)
                                      .view_as(y)).sum(), [x, *params], allow_unused=True)
                 for y, _ in outs]
        (y_c, s_c), (y_s, s_s) = outs
        assert (y_c - y_s).abs().max() < 1e-12
        assert all((a - b).abs().max() < 1e-12 for a, b in zip(s_c, s_s))
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                assert (a - b).abs().max() < 1e-11


@pytest.mark.parametrize("name", ["titans", "ttt_linear", "ttt_mlp"])
@pytest.mark.parametrize("inner_norm", [False, True])
def test_inner_norm_parameters_exist_only_with_the_norm_and_all_get_gradients(name, inner_norm):
    """The inner LayerNorm's weight and bias are parameters only when the option is on (an
    unused parameter breaks DDP's reducer), and with either setting every trainable
    parameter reaches the output in each mode."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=16, num_heads=2, inner_norm=inner_norm).double()
    names = {n for n, _ in layer.named_parameters()}
    assert ({"inner_norm_weight", "inner_norm_bias"} <= names) == inner_norm
    assert not ({"inner_norm_weight", "inner_norm_bias"} & names) or inner_norm
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    for mode in layer.modes:
        named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(layer(x, mode=mode)[0].square().sum(),
                                    [p for _, p in named], allow_unused=True)
        assert [n for (n, _), g in zip(named, grads) if g is None] == [], mode



def test_sequential_second_derivative_on_the_torch_path():
    """MAC's reference loop runs PyTorch's attention by its math form (the fused kernels have no
    double backward): differentiable twice in x and the parameters."""
    torch.manual_seed(0)
    layer = rnnzoo.create('titans_mac', **dict(d_model=4, num_heads=1, head_dim=4, chunk_size=4, d_conv=2,
                                        num_persistent=1)).double()
    with backend.force("torch"):
        check_layer_twice(layer, torch.randn(1, 3, 4, dtype=torch.float64,
                                             requires_grad=True), "sequential")
