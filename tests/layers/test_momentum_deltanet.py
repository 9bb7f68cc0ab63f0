"""Momentum DeltaNet: fla's naive momentum delta rule (recurrent and chunk) on the layer's own
tensors; without momentum it is the SPLR delta rule (ops.erase_delta); with one repeated
key-value pair its error follows Polyak's heavy-ball recurrence."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo
from rnnzoo.ops.erase_delta import erase_delta
from rnnzoo.ops.momentum_delta import momentum_delta, momentum_delta_recurrent


def test_layer_equals_fla_naive_momentum_delta_rule():
    naive = pytest.importorskip("fla.ops.momentum_delta_rule.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("momentum_deltanet", d_model=16, num_heads=2, head_dim=8)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 24, 16)
    S, M, conv = layer.init_state(2)
    S, M = torch.randn_like(S), torch.randn_like(M)
    q, k, v, la, lm, beta, eta, _ = layer.op_inputs(x, conv)
    with torch.no_grad():
        refs = [naive.recurrent_momentum_delta_rule_ref(q, k, v, la, lm, k, beta, eta,
                                                        initial_S=S, initial_M=M,
                                                        output_final_state=True),
                naive.chunk_momentum_delta_rule_ref(q, k, v, k, la, lm, beta, eta, initial_S=S,
                                                    initial_M=M, output_final_state=True,
                                                    chunk_size=8)]
        y, (S_ours, M_ours, _) = layer(x, (S, M, conv))
        for o_ref, SM_ref in refs:
            y_ref = layer.op_output(o_ref, x)
            assert (y - y_ref).abs().max() < 1e-4 * y_ref.abs().max()
            for ours, ref in ((S_ours, SM_ref[0]), (M_ours, SM_ref[1])):
                assert (ours - ref).abs().max() < 1e-4 * ref.abs().max()


def _tensors(B=2, T=13, H=2, K=4, V=3):
    torch.manual_seed(0)
    f64 = torch.float64
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, dtype=f64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, V, dtype=f64)
    gates = [-torch.rand(B, T, H, dtype=f64), torch.rand(B, T, H, dtype=f64),
             1 + torch.rand(B, T, H, dtype=f64)]
    return q, k, v, gates, torch.randn(B, H, K, V, dtype=f64)


def test_without_momentum_it_is_the_splr_delta_rule():
    """mu = 0 (log_mu = -1e4): S_t = (alpha I - beta eta k k^T) S_{t-1} + beta eta k v^T."""
    q, k, v, (log_alpha, beta, eta), S0 = _tensors()
    log_mu = torch.full_like(beta, -1e4)
    o, (S, _) = momentum_delta_recurrent(q, k, v, k, log_alpha, log_mu, beta, eta,
                                         initial_state=(S0, torch.zeros_like(S0)))
    c = (beta * eta)[..., None]
    o_ref, S_ref = erase_delta(q, k, c * v, log_alpha, c * k, initial_state=S0, before_decay=True,
                               chunk_size=4)
    assert (o - o_ref).abs().max() < 1e-12 and (S - S_ref).abs().max() < 1e-12


def test_one_repeated_pair_follows_the_heavy_ball_recurrence():
    """alpha = 1, one unit key k and value v written again and again, read at k: the error
    e_t = S_t^T k - v obeys e_t = (1 + mu - beta eta) e_{t-1} - mu e_{t-2} (Polyak's heavy
    ball on |S^T k - v|^2 / 2), e_{-2} = e_{-1} since M starts at 0. With mu = 0 it would be
    plain gradient descent, e_t = (1 - beta eta) e_{t-1}, which the test also rules out."""
    f64 = torch.float64
    T, K, V = 12, 4, 3
    k = torch.nn.functional.normalize(torch.randn(K, dtype=f64), dim=0).expand(1, T, 1, K)
    v = torch.randn(V, dtype=f64).expand(1, T, 1, V)
    mu, beta, eta = 0.6, 0.5, 1.5
    full = lambda c: torch.full((1, T, 1), c, dtype=f64)  # noqa: E731
    S0 = torch.randn(1, 1, K, V, dtype=f64)
    o, _ = momentum_delta_recurrent(k, k, v, k, full(0.0), full(math.log(mu)),
                                    full(beta), full(eta), scale=1.0,
                                    initial_state=(S0, torch.zeros_like(S0)))
    e = o[0, :, 0] - v[0, :, 0]
    prev = prev2 = S0[0, 0].T @ k[0, 0, 0] - v[0, 0, 0]
    for t in range(T):
        expect = (1 + mu - beta * eta) * prev - mu * prev2
        assert (e[t] - expect).abs().max() < 1e-12
        prev2, prev = prev, e[t]
    assert (e[1] - (1 - beta * eta) * e[0]).abs().max() > 1e-3


def test_options_checked():
    with pytest.raises(ValueError, match="min_log_mu must lie in"):
        rnnzoo.create("momentum_deltanet", d_model=8, min_log_mu=0.5)
    with pytest.raises(ValueError, match="tau_factor must lie in"):
        rnnzoo.create("momentum_deltanet", d_model=8, tau_factor=0.0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16])
@pytest.mark.parametrize("log_mu_scale", [1.0, 1e4], ids=["momentum", "mu=0"])
def test_chunk_form_equals_the_loop(chunk_size, log_mu_scale):
    """The exact chunk form (one triangular solve per chunk, the (S, M) pair passed between
    chunks) against the loop in float64: outputs, both final states and every input's
    gradient, a ragged last chunk (T = 13), a read key p apart from the write key k, and
    mu = 0 (log_mu = -1e4, the decays underflow to exact zeros)."""
    q, k, v, (log_alpha, beta, eta), S0 = _tensors()
    p = torch.nn.functional.normalize(torch.randn_like(k), dim=-1)
    log_mu = -log_mu_scale * torch.rand_like(beta)
    M0 = torch.randn_like(S0)
    args = [t.clone().requires_grad_() for t in (q, k, v, p, log_alpha, log_mu, beta, eta)]
    outs = []
    for fn, extra in ((momentum_delta_recurrent, {}), (momentum_delta, dict(chunk_size=chunk_size))):
        o, (S, M) = fn(*args, scale=0.7, initial_state=(S0, M0), **extra)
        loss = (o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).sum() + (S * M).sum()
        outs.append((o, S, M, torch.autograd.grad(loss, args)))
    (o1, S1, M1, g1), (o2, S2, M2, g2) = outs
    for a, b in [(o1, o2), (S1, S2), (M1, M2), *zip(g1, g2)]:
        assert (a - b).abs().max() < 1e-10 * max(1.0, a.abs().max())
    assert (M1 - M0).abs().max() > 1e-2                    # the momentum moved


def test_layer_auto_mode_is_the_chunk_form():
    layer = rnnzoo.create("momentum_deltanet", d_model=8, num_heads=2)
    assert "chunk" in layer.modes and layer.auto_mode(torch.zeros(1, 64, 8)) == "chunk"
