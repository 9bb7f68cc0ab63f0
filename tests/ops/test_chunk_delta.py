"""ops.chunk.delta: every chunkwise op equals its recurrence, and flash-linear-attention's
own naive references on the same tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.ops.chunk.delta import (
    delta_product,
    delta_product_recurrent,
    delta_rule,
    delta_rule_recurrent,
    rwkv7,
    rwkv7_recurrent,
)

B, T, H, K, V = 2, 13, 3, 5, 4
f64 = torch.float64


@pytest.fixture(autouse=True, params=["native", "chunks"])
def cpu_path(request, monkeypatch):
    """Every test twice: delta_rule / delta_product on the CPU's C recurrence
    (ops.native.delta_scan) and on the chunk form (RNNZOO_NATIVE=0), both against the loop."""
    if request.param == "chunks":
        monkeypatch.setenv("RNNZOO_NATIVE", "0")
    return request.param


def rand(*shape, dtype=f64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64).to(dtype)


def delta_inputs(dtype=f64, gated=True, neg=True):
    q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    k = F.normalize(k, dim=-1)
    beta = torch.sigmoid(rand(B, T, H, seed=4)) * (2 if neg else 1)
    g = -F.softplus(rand(B, T, H, seed=5)) if gated else None
    S0 = rand(B, H, K, V, seed=6)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return [cast(t) for t in (q, k, v, beta, g)], cast(S0)


def rwkv7_inputs(dtype=f64, steep=1.0):
    r, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, V, seed=3)
    w = -steep * 0.6065 * torch.sigmoid(rand(B, T, H, K, seed=4))  # RWKV-7's range by default
    kappa = F.normalize(rand(B, T, H, K, seed=5), dim=-1)
    lr = torch.sigmoid(rand(B, T, H, K, seed=7))
    S0 = rand(B, H, K, V, seed=6)
    return [t.to(dtype) for t in (r, w, k, v, -kappa, kappa * lr)], S0.to(dtype)


def max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 64])
def test_delta_rule_chunk_equals_recurrent(gated, chunk_size):
    args, S0 = delta_inputs(gated=gated)
    o_ref, s_ref = delta_rule_recurrent(*args, initial_state=S0)
    o, s = delta_rule(*args, initial_state=S0, chunk_size=chunk_size)
    assert max_err(o, o_ref) < 1e-12 and max_err(s, s_ref) < 1e-12
    assert o.dtype == f64 and s.dtype == f64


def test_delta_rule_gradients_equal_recurrent():
    args, S0 = delta_inputs()
    leaves = [t.clone().requires_grad_() for t in (*args, S0)]
    grads = []
    for op, kw in ((delta_rule_recurrent, {}), (delta_rule, dict(chunk_size=4))):
        o, s = op(*leaves[:5], initial_state=leaves[5], **kw)
        loss = (o * rand(*o.shape, seed=8)).sum() + (s * rand(*s.shape, seed=9)).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        assert max_err(a, b) < 1e-10


def test_delta_rule_float32_state_and_output_dtype():
    args, S0 = delta_inputs(torch.bfloat16)
    o, s = delta_rule(*args, chunk_size=4)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


def test_gate_in_log_space_survives_steep_decay():
    """g = -30 per step: e^{G} over a 64-step chunk underflows to 0 (e^-1920), so a form that
    divided cumulative products would give 0/0; differences of log-gates stay exact."""
    args, S0 = delta_inputs(torch.float32)
    args[4] = torch.full_like(args[4], -30.0)
    o_ref, s_ref = delta_rule_recurrent(*args, initial_state=S0)
    o, s = delta_rule(*args, initial_state=S0, chunk_size=64)
    assert torch.isfinite(o).all() and max_err(o, o_ref) < 1e-5


def test_closed_gate_erases_memory():
    """alpha_t = exp(g_t) = 0 at step t0: everything after equals a fresh run from zero state."""
    args, S0 = delta_inputs()
    q, k, v, beta, g = args
    t0 = 6
    g = g.clone()
    g[:, t0] = -1e4
    for op in (delta_rule_recurrent, lambda *a, **kw: delta_rule(*a, chunk_size=4, **kw)):
        o, s = op(q, k, v, beta, g, initial_state=S0)
        o2, s2 = op(q[:, t0:], k[:, t0:], v[:, t0:], beta[:, t0:], g[:, t0:])
        assert max_err(o[:, t0:], o2) < 1e-12 and max_err(s, s2) < 1e-12


@pytest.mark.parametrize("n_h", [1, 3])
def test_delta_product_chunk_equals_recurrent(n_h):
    args, S0 = delta_inputs()
    q, _, _, _, g = args
    k = F.normalize(rand(B, T, n_h, H, K, seed=11), dim=-1)
    v = rand(B, T, n_h, H, V, seed=12)
    beta = 2 * torch.sigmoid(rand(B, T, n_h, H, seed=13))
    o_ref, s_ref = delta_product_recurrent(q, k, v, beta, g, initial_state=S0)
    o, s = delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=4)
    assert max_err(o, o_ref) < 1e-12 and max_err(s, s_ref) < 1e-12
    if n_h == 1:  # one Householder step per token is the delta rule
        o1, s1 = delta_rule(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], g, initial_state=S0)
        assert max_err(o, o1) < 1e-12 and max_err(s, s1) < 1e-12


@pytest.mark.parametrize("steep,chunk_size", [(1.0, 4), (1.0, 64), (200.0, 64)])
def test_rwkv7_chunk_equals_recurrent(steep, chunk_size):
    """steep = 200: log-decays down to -120 per step; the op halves its chunk to stay stable."""
    args, S0 = rwkv7_inputs(steep=steep)
    o_ref, s_ref = rwkv7_recurrent(*args, initial_state=S0)
    o, s = rwkv7(*args, initial_state=S0, chunk_size=chunk_size)
    assert max_err(o, o_ref) < 1e-12 and max_err(s, s_ref) < 1e-12


def test_rwkv7_gradients_equal_recurrent():
    args, S0 = rwkv7_inputs()
    leaves = [t.clone().requires_grad_() for t in (*args, S0)]
    grads = []
    for op, kw in ((rwkv7_recurrent, {}), (rwkv7, dict(chunk_size=4))):
        o, s = op(*leaves[:6], initial_state=leaves[6], **kw)
        loss = (o * rand(*o.shape, seed=8)).sum() + (s * rand(*s.shape, seed=9)).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        assert max_err(a, b) < 1e-10


def test_rwkv7_float32_steep_decay_has_finite_gradients():
    """Per-step log-decays down to -120 in float32: exp(+120) would overflow a factor."""
    args, S0 = rwkv7_inputs(torch.float32, steep=200.0)
    leaves = [t.clone().requires_grad_() for t in args]
    o, s = rwkv7(*leaves, initial_state=S0.float(), chunk_size=64)
    o_ref, s_ref = rwkv7_recurrent(*args, initial_state=S0.float())
    assert max_err(o, o_ref) < 1e-4 * o_ref.abs().max().item()
    (o.sum() + s.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_rwkv7_without_decay_is_the_delta_rule():
    """w = 0, a = -k, b = k (unit k): S_t = (I - k k^T) S + k v^T, the delta rule with beta = 1;
    two independent chunkwise solvers agree."""
    (q, k, v, _, _), S0 = delta_inputs(gated=False)
    one = torch.ones(B, T, H, dtype=f64)
    o_d, s_d = delta_rule(q, k, v, one, scale=1.0, initial_state=S0, chunk_size=4)
    o_r, s_r = rwkv7(q, torch.zeros_like(k), k, v, -k, k, initial_state=S0, chunk_size=4)
    assert max_err(o_d, o_r) < 1e-12 and max_err(s_d, s_r) < 1e-12


def test_bad_arguments_name_the_argument():
    args, S0 = delta_inputs()
    with pytest.raises(ValueError, match=r"delta_rule: beta must have shape \(2, 13, 3\)"):
        delta_rule(args[0], args[1], args[2], args[3][..., :1])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        delta_rule(*args, initial_state=S0[:, :, :2])
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        delta_rule(*args, chunk_size=0)
    with pytest.raises(ValueError, match=r"delta_product: k must be \(B, T, n_h, H, K\)"):
        delta_product(*args)
    r_args, _ = rwkv7_inputs()
    with pytest.raises(ValueError, match="rwkv7: b must have shape"):
        rwkv7(*r_args[:5], r_args[5][..., :2])


# -- flash-linear-attention's naive references (fla-core 0.6.0), float32 on CPU ------------------
def _fla(module):
    return pytest.importorskip(module, reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")


def close(a, b, tol=2e-5):
    return max_err(a.float(), b.float()) < tol * (1 + b.abs().max().item())


@pytest.mark.parametrize("neg", [False, True])
def test_delta_rule_equals_fla_naive(neg):
    naive = _fla("fla.ops.delta_rule.naive")
    (q, k, v, beta, _), S0 = delta_inputs(torch.float32, gated=False, neg=neg)
    tr = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731  fla's naive takes (B, H, T, D)
    o_fla, s_fla = naive.delta_rule_recurrence(tr(q), tr(k), tr(v), tr(beta), initial_state=S0.clone())
    for op in (delta_rule_recurrent, lambda *a, **kw: delta_rule(*a, chunk_size=4, **kw)):
        o, s = op(q, k, v, beta, initial_state=S0)
        assert close(o, tr(o_fla)) and close(s, s_fla)


def test_gated_delta_rule_equals_fla_naive():
    naive = _fla("fla.ops.gated_delta_rule.naive")
    (q, k, v, beta, g), S0 = delta_inputs(torch.float32)
    o_fla, s_fla = naive.naive_recurrent_gated_delta_rule(
        q, k, v, beta, g, scale=0.7, initial_state=S0.clone(), output_final_state=True)
    o_fc, s_fc = naive.naive_chunk_gated_delta_rule(
        q, k, v, g, beta, chunk_size=4, scale=0.7, initial_state=S0.clone(), output_final_state=True)
    assert close(o_fc, o_fla) and close(s_fc, s_fla)  # fla's own two forms agree
    for op in (delta_rule_recurrent, lambda *a, **kw: delta_rule(*a, chunk_size=4, **kw)):
        o, s = op(q, k, v, beta, g, scale=0.7, initial_state=S0)
        assert close(o, o_fla) and close(s, s_fla)


def test_gated_delta_product_equals_fla_naive():
    naive = _fla("fla.ops.gated_delta_product.naive")
    (q, _, _, _, g), S0 = delta_inputs(torch.float32)
    n_h = 2
    k = F.normalize(rand(B, T, n_h, H, K, seed=11), dim=-1).float()
    v = rand(B, T, n_h, H, V, seed=12).float()
    beta = 2 * torch.sigmoid(rand(B, T, n_h, H, seed=13)).float()
    o_fla, s_fla = naive.naive_recurrent_gated_delta_product(
        q, k.flatten(1, 2), v.flatten(1, 2), g, beta.flatten(1, 2), scale=K ** -0.5,
        initial_state=S0.clone(), output_final_state=True, num_householder=n_h)
    for op in (delta_product_recurrent, lambda *a, **kw: delta_product(*a, chunk_size=4, **kw)):
        o, s = op(q, k, v, beta, g, initial_state=S0)
        assert close(o, o_fla) and close(s, s_fla)


def test_rwkv7_equals_fla_naive_dplr():
    """fla's RWKV-7 is its DPLR delta rule: S = S diag(exp gk) + b (a^T S) + k v^T (K x V)."""
    naive = _fla("fla.ops.generalized_delta_rule.dplr.naive")
    (r, w, k, v, a, b), S0 = rwkv7_inputs(torch.float32)
    tr = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731
    o_fla, s_fla = naive.dplr_recurrence(tr(r), tr(k), tr(v), tr(a), tr(b), tr(w),
                                         initial_state=S0.clone())
    for op in (rwkv7_recurrent, lambda *x, **kw: rwkv7(*x, chunk_size=4, **kw)):
        o, s = op(r, w, k, v, a, b, scale=K ** -0.5, initial_state=S0)
        assert close(o, tr(o_fla)) and close(s, s_fla)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "deltaproduct", "rwkv7"])
def test_fla_bench_baselines_compute_the_layer(name):
    """The bench's fla baselines (benchmarks/peers/fla_delta.py) run the same block as the layer."""
    _fla("fla.ops.delta_rule.naive")
    from peers import fla_delta

    import rnnzoo
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=8, num_heads=2, chunk_size=4)
    x = torch.randn(2, 9, 8)
    run = (fla_delta.rwkv7_with_fla if name == "rwkv7" else fla_delta.delta_block_with_fla)
    y_fla = run(layer, x)
    y, _ = layer(x, mode="chunk")
    assert close(y_fla, y, 1e-4)


# -- non-finite inputs: time never runs backwards ---------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_nonfinite_input_never_reaches_earlier_outputs(gated):
    """A NaN / inf at step t (mid-chunk) in q, k, v, beta or g: outputs before t are the
    clean run's (they were NaN from the chunk start: 0 * NaN in the chunk's products)."""
    from _nonfinite import check_causal
    args, S0 = delta_inputs(gated=gated)
    timed = range(5) if gated else range(4)
    check_causal(delta_rule, args, timed, (5, 10), kwargs=dict(initial_state=S0, chunk_size=4))


def test_delta_product_nonfinite_input_never_reaches_earlier_outputs():
    from _nonfinite import check_causal
    q = rand(B, T, H, K, seed=1)
    k = F.normalize(rand(B, T, 2, H, K, seed=2), dim=-1)
    v, beta = rand(B, T, 2, H, V, seed=3), torch.sigmoid(rand(B, T, 2, H, seed=4))
    g = -F.softplus(rand(B, T, H, seed=5))
    check_causal(delta_product, [q, k, v, beta, g], range(5), (5, 10), kwargs=dict(chunk_size=4))


def test_rwkv7_nonfinite_input_never_reaches_earlier_outputs():
    from _nonfinite import check_causal
    args, S0 = rwkv7_inputs()
    check_causal(rwkv7, args, range(6), (5, 10), kwargs=dict(initial_state=S0, chunk_size=4))
