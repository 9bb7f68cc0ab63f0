"""TTT-Linear (arXiv:2407.04620): fla-core's naive TTT-Linear and the paper's loop on the
layer's own tensors; with one step a mini-batch and no inner norm it is the delta rule."""

from __future__ import annotations

import pytest
import torch
from _ttt_loop import paper_loop

import rnnzoo
from rnnzoo.ops.chunk.delta import delta_rule
from rnnzoo.ops.memory import layer_norm, ttt_minibatch, ttt_sequential

OPS = [ttt_sequential, ttt_minibatch]


def tensors(layer, x):
    *mem, conv = layer.init_state(x.shape[0], dtype=x.dtype)
    q, k, v, lr, _ = layer.op_inputs(x, conv)
    return q, k, v, lr, tuple(mem)


def perturbed(name, **options):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def test_equals_fla_naive_ttt_linear():
    """fla-core 0.6.0's chunk_ttt_linear_ref takes one rate per step (eta_t scales every
    gradient step t reads): the paper's tok_t lr_s when lr is constant in time, here with the
    rate gate's weight zeroed (its bias still differs by head). fla returns z + LN(z) where
    the paper (and this layer) adds the query, q + LN(z): compared on z + LN(z) from our z.
    The final weights W_0 - tok_M-1 A equal fla's final state. fla computes in float32."""
    naive = pytest.importorskip("fla.ops.ttt.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    layer = perturbed("ttt_linear", d_model=16, num_heads=2, head_dim=8, mini_batch_size=8)
    with torch.no_grad():
        layer.lr_proj.weight.zero_()
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    q, k, v, lr, mem = tensors(layer, x)
    tok, init, w, b = layer.op_args(torch.float64)
    B, T, H, K = q.shape
    eta = (tok.repeat(T // 8)[None, :, None] * lr)[..., None]
    W0, b0 = init[0].expand(B, H, K, K), init[1].expand(B, H, K)[:, :, None]
    with torch.no_grad():
        o_fla, h_fla, hb_fla = naive.chunk_ttt_linear_ref(
            *[t.float() for t in (q, k, v, w, b, eta)], scale=1.0, eps=layer.norm_eps,
            mini_batch_size=8, initial_state=W0.float(), initial_state_bias=b0.float(),
            output_final_state=True)
        for op in OPS:
            z, (dW, db, A, Ab, n) = op("linear", q, k, v, lr, tok, init, mem, w, b, layer.norm_eps)
            ours = z + layer_norm(z, w, b, layer.norm_eps)[0]
            assert (ours - o_fla).abs().max() < 1e-5 * o_fla.abs().max()
            assert (n == 8).all()
            W_end, b_end = W0 + dW - tok[-1] * A, b0[:, :, 0] + db - tok[-1] * Ab
            assert (W_end - W0).abs().max() > 1e-2          # the memory did learn
            assert (W_end - h_fla).abs().max() < 1e-5 * h_fla.abs().max()
            assert (b_end - hb_fla[:, :, 0]).abs().max() < 1e-5 * hb_fla.abs().max()


@pytest.mark.parametrize("op", OPS, ids=["sequential", "minibatch"])
def test_equals_the_papers_loop(op):
    """Per-step rates from the gate, tok_t with learned offsets, a last partial mini-batch:
    the engine equals the loop with autograd's gradients of the literal loss."""
    layer = perturbed("ttt_linear", d_model=12, num_heads=3, head_dim=4, mini_batch_size=4)
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    q, k, v, lr, mem = tensors(layer, x)
    tok, init, w, b = layer.op_args(torch.float64)
    with torch.no_grad():
        z_ref, _ = paper_loop(q, k, v, lr, tok, init, w, b, layer.norm_eps)
        z, _ = op("linear", q, k, v, lr, tok, init, mem, w, b, layer.norm_eps)
    assert (z - z_ref).abs().max() < 1e-12


@pytest.mark.parametrize("op", OPS, ids=["sequential", "minibatch"])
def test_one_step_minibatches_without_norm_are_the_delta_rule(op):
    """Mini-batch size 1, no inner LN: W_t = W_t-1 - lr_t k_t (k_t W + b - (v_t - k_t)),
    the delta rule with beta = lr on the keys [k, 1] (the bias is the weight of a constant
    input), values v - k and state [W; b] (ops.chunk.delta_rule)."""
    layer = perturbed("ttt_linear", d_model=12, num_heads=3, head_dim=4, mini_batch_size=1,
                      inner_norm=False, base_lr=8.0)
    x = torch.randn(2, 13, 12, dtype=torch.float64)
    q, k, v, lr, mem = tensors(layer, x)
    tok, init, w, b = layer.op_args(torch.float64)
    with torch.no_grad():
        layer.tok_offset.zero_()
        tok = layer.token_factors(torch.float64)
        z, _ = op("linear", q, k, v, lr, tok, init, mem, w, b, layer.norm_eps, False)
    one = torch.ones_like(q[..., :1])
    S0 = torch.cat([init[0], init[1][:, None]], 1).expand(2, -1, -1, -1)
    o, _ = delta_rule(torch.cat([q, one], -1), torch.cat([k, one], -1), v - k, lr,
                      scale=1.0, initial_state=S0, chunk_size=4)
    assert lr.max() > 0.3                       # the updates are not negligible
    assert (z - o).abs().max() < 1e-12
    y, _ = layer(x)                             # the block reads q + z
    assert (y - layer.op_output(q, o, x)).abs().max() < 1e-12


def test_resumes_mid_minibatch_at_a_different_offset_per_sequence():
    """Two sequences stopped after 3 and 6 steps (lengths) continue, in the mini-batch form,
    each from its own place in its mini-batch: as the whole sequences run alone."""
    layer = perturbed("ttt_linear", d_model=6, num_heads=2, head_dim=3, mini_batch_size=4)
    x = torch.randn(2, 13, 6, dtype=torch.float64)
    lengths = torch.tensor([3, 6])
    _, s = layer(x[:, :6], mode="minibatch", lengths=lengths)
    assert s[-2].tolist() == [3.0, 2.0]           # steps into the current mini-batch
    for b, n in enumerate(lengths.tolist()):
        state = tuple(t[b:b + 1] for t in s)
        y, _ = layer(x[b:b + 1, n:], state, mode="minibatch")
        y_ref, _ = layer(x[b:b + 1], mode="sequential")
        assert (y - y_ref[:, n:]).abs().max() < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match="mini_batch_size"):
        rnnzoo.create("ttt_linear", d_model=8, mini_batch_size=0)
    with pytest.raises(ValueError, match="base_lr"):
        rnnzoo.create("ttt_linear", d_model=8, base_lr=-1.0)
    with pytest.raises(TypeError, match="inner_norm must be a bool"):
        rnnzoo.create("ttt_linear", d_model=8, inner_norm=1)


def test_bench_baseline_runs_the_same_block():
    """The bench's fla baseline (benchmarks/peers/fla_ttt.py) feeds the layer's tensors to fla:
    at a constant rate (gate weight zero) fla's read is z + LN(z) of the layer's z, which the
    baseline puts through the rest of the block in z's place."""
    pytest.importorskip("fla.ops.ttt.naive", reason="fla-core 0.6.0 (see .ci/install-peers)")
    from peers import fla_ttt
    layer = perturbed("ttt_linear", d_model=8, num_heads=2, head_dim=4, mini_batch_size=4).float()
    with torch.no_grad():
        layer.lr_proj.weight.zero_()
        x = torch.randn(2, 12, 8)
        y_fla = fla_ttt.ttt_linear_with_fla(layer, x)
        q, k, v, lr, mem = tensors(layer, x)
        tok, init, w, b = layer.op_args(torch.float32)
        z, _ = ttt_minibatch("linear", q, k, v, lr, tok, init, mem, w, b, layer.norm_eps)
        y = layer.op_output(q, z + layer_norm(z, w, b, layer.norm_eps)[0], x)
    assert (y - y_fla).abs().max() < 1e-4 * y.abs().max()


# -- rotary positions inside the mini-batch (the paper's code) ---------------------------------
def rotated_by_hand(t, pos, base=10000.0):
    """LLaMA's rotary on t (B, T, H, K) at integer positions pos (B, T): channel j pairs with
    j + K/2 and turns by pos * base^(-j / (K/2))."""
    half = t.shape[-1] // 2
    ang = pos[..., None, None] * base ** (-torch.arange(half, dtype=t.dtype) / half)
    a, b = t[..., :half], t[..., half:]
    return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], -1)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_rope_turns_q_and_k_by_their_place_in_the_minibatch(name):
    """rope=True is the rope=False layer on q, k rotated by hand at (n + t) mod M, with n the
    steps already taken in the mini-batch: a fresh sequence and one resumed from 3 steps."""
    layer = perturbed(name, d_model=8, num_heads=2, head_dim=4, mini_batch_size=4, rope=True)
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    with torch.no_grad():
        _, s3 = layer(x[:, :3])
        for state, n in ((None, 0), (s3, 3)):
            *mem, conv = layer.init_state(2, dtype=x.dtype) if state is None else state
            q, k, v, lr, _ = layer.op_inputs(x, conv)
            pos = ((n + torch.arange(11)) % 4).to(x.dtype).expand(2, -1)
            q, k = rotated_by_hand(q, pos), rotated_by_hand(k, pos)
            tok, init, w, b = layer.op_args(x.dtype)
            z, _ = ttt_sequential(layer.kind, q, k, v, lr, tok, init, tuple(mem), w, b,
                                  layer.norm_eps, layer.inner_norm)
            want = layer.op_output(q, z, x)
            for mode in layer.modes:
                assert (layer(x, state, mode=mode)[0] - want).abs().max() < 1e-12
    layer.rope = False
    assert (layer(x)[0] - want).abs().max() > 1e-3


def test_rope_positions_restart_every_minibatch():
    """The positions are taken modulo the mini-batch size: with one step a mini-batch every
    position is 0, and rope=True is exactly rope=False; not so with mini-batches of 4."""
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    for M, same in ((1, True), (4, False)):
        layer = perturbed("ttt_linear", d_model=8, num_heads=2, head_dim=4, mini_batch_size=M,
                          rope=True)
        with torch.no_grad():
            y = layer(x, mode="minibatch")[0]
            layer.rope = False
            err = (y - layer(x, mode="minibatch")[0]).abs().max()
        assert (err == 0) if same else (err > 1e-3)


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="head_dim must be even"):
        rnnzoo.create("ttt_linear", d_model=6, num_heads=2, head_dim=3, rope=True)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_gradient_reaches_a_states_zero_sums(name):
    """On the CPU the mini-batch mode skips reading a state's gradient sums it sees are zero
    (a fresh state); asked for their gradient, it must read them all the same: the gradient
    at exact zeros equals the gradient at sums of 1e-200, where the read runs."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=16, num_heads=2, mini_batch_size=4).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)

    def grads(eps):
        *mem, conv = layer.init_state(2, dtype=torch.float64)
        L2 = (len(mem) - 1) // 2
        acc = [(a + eps).requires_grad_() for a in mem[L2:2 * L2]]
        y, _ = layer(x, (*mem[:L2], *acc, mem[-1], conv), mode="minibatch")
        return torch.autograd.grad(y.square().sum(), acc, allow_unused=True)

    for g0, g1 in zip(grads(0.0), grads(1e-200)):
        assert g0 is not None and torch.allclose(g0, g1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_inputs_take_q_k_v_from_the_qkv_projections_rows_in_order(dtype):
    """op_inputs runs W_qkv's rows [q; k] and v as two products (the conv on [q, k] as
    written): q, k, v, the rate and the conv state equal the one product's split, the conv
    over cat([q, k]) (rows 0..HK q, HK..2HK k, 2HK..3HK v, as the state dicts hold them)."""
    layer = perturbed("ttt_linear", d_model=16, num_heads=2, head_dim=8).to(dtype)
    B, T, H, K = 2, 11, 2, 8
    x = torch.randn(B, T, 16, dtype=dtype)
    conv = torch.randn(B, layer.conv.d_conv - 1, 2 * H * K, dtype=dtype)
    q, k, v, lr, new = layer.op_inputs(x, conv)
    wq, wk, wv = layer.qkv_proj(x).split([H * K] * 3, -1)
    qk, want_new = layer.conv(torch.cat([wq, wk], -1), conv)
    want = (*qk.split([H * K] * 2, -1), wv)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for got, w in zip((q, k, v), want):
        assert (got.reshape(B, T, H * K) - w).abs().max() <= tol
    assert (new - want_new).abs().max() <= tol
    assert lr.shape == (B, T, H)
