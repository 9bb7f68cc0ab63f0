"""Longhorn (arXiv:2407.14207): the paper's equations as a plain loop (no code of its own
exists in the installed peers) against every mode; the fact: a step is the closed-form
minimiser of its online regression objective (torch.linalg.solve of the normal equations, and
the objective's gradient vanishes there) whenever the paper's diagonal transition is exact:
from an empty state, or for an axis-aligned key; otherwise the layer keeps the diagonal of
the minimiser's transition I - eps k k^T."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers.longhorn import longhorn_recurrence

f64 = torch.float64
MODES = ("sequential", "scan", "chunk")


def _layer():
    torch.manual_seed(0)
    layer = rnnzoo.create("longhorn", d_model=6, d_state=4, d_conv=3, expand=2, dt_rank=2,
                          chunk_size=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def _papers_loop(u, beta, k, q, S):
    """Liu et al. eq. for the Longhorn SSM, one channel i and one state column j at a time."""
    B, T, d = u.shape
    m = k.shape[-1]
    S, ys = S.clone(), torch.zeros(B, T, d, dtype=u.dtype)
    for b in range(B):
        for t in range(T):
            eps = beta[b, t] / (1 + beta[b, t] * (k[b, t] ** 2).sum())
            for i in range(d):
                for j in range(m):
                    S[b, i, j] = (1 - eps[i] * k[b, t, j] ** 2) * S[b, i, j] \
                        + eps[i] * u[b, t, i] * k[b, t, j]
                ys[b, t, i] = (S[b, i] * q[b, t]).sum()
    return ys, S


def test_layer_equals_the_papers_loop():
    """The block's u, beta, k, q through the paper's recurrence written as a plain loop, from a
    random state, then the block's output: equal to every mode of the layer."""
    layer = _layer()
    x = torch.randn(2, 9, 6, dtype=f64)
    S0, conv = layer.init_state(2, dtype=f64)
    S0 = torch.randn_like(S0)
    with torch.no_grad():
        u, beta, k, q, z, _ = layer.op_inputs(x, conv)
        y_loop, S_ref = _papers_loop(u, beta, k, q, S0)
        y_ref = layer.op_output(y_loop, u, z, x)
        for mode in MODES:
            y, (S, _) = layer(x, (S0, conv), mode=mode)
            assert (y - y_ref).abs().max() < 1e-12 * y_ref.abs().max(), mode
            assert (S - S_ref).abs().max() < 1e-12 * S_ref.abs().max(), mode


def _objective(S, S_prev, k, u, beta):
    """||S - S_prev||_F^2 + sum_i beta_i (S_i . k - u_i)^2 (one batch element)."""
    return ((S - S_prev) ** 2).sum() + (beta * (S @ k - u) ** 2).sum()


def _minimiser(S_prev, k, u, beta):
    """Row by row, the normal equations (I + beta_i k k^T) s_i = s_prev,i + beta_i u_i k."""
    m = k.shape[0]
    A = torch.eye(m, dtype=f64) + beta[:, None, None] * torch.outer(k, k)       # (d, m, m)
    return torch.linalg.solve(A, S_prev + (beta * u)[:, None] * k)


@pytest.mark.parametrize("mode", MODES)
def test_first_step_from_an_empty_state_is_the_closed_form_minimiser(mode):
    """The layer's own first step (T = 1 from init_state, and `step`): its state equals the
    linalg.solve minimiser of the online objective, and the objective's gradient is 0 there."""
    layer = _layer()
    x = torch.randn(3, 1, 6, dtype=f64)
    with torch.no_grad():
        u, beta, k, _, _, _ = layer.op_inputs(x, layer.init_state(3, dtype=f64)[1])
        _, (S1, _) = layer(x, mode=mode)
        _, (S_step, _) = layer.step(x[:, 0])
    assert torch.allclose(S_step, S1, rtol=0, atol=1e-14)
    for b in range(3):
        zero = torch.zeros_like(S1[b])
        S_star = _minimiser(zero, k[b, 0], u[b, 0], beta[b, 0])
        assert (S1[b] - S_star).abs().max() < 1e-13 * S_star.abs().max()
        S = S1[b].clone().requires_grad_()
        (grad,) = torch.autograd.grad(_objective(S, zero, k[b, 0], u[b, 0], beta[b, 0]), S)
        assert grad.abs().max() < 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_axis_aligned_keys_step_is_the_minimiser_from_any_state(mode):
    """k_t = c e_j: k k^T is diagonal, so the paper's transition is exact and every step,
    from a random state, is the minimiser of its objective. A general key is not: there the
    step keeps the diagonal of I - eps k k^T, differing from the minimiser by
    eps_i k_j sum_{l != j} S_il k_l."""
    torch.manual_seed(1)
    d, m = 5, 4
    S_prev = torch.randn(1, d, m, dtype=f64)
    u, q = torch.randn(1, 1, d, dtype=f64), torch.randn(1, 1, m, dtype=f64)
    beta = torch.rand(1, 1, d, dtype=f64) * 3
    for j in range(m):
        k = torch.zeros(1, 1, m, dtype=f64)
        k[..., j] = 1.7
        _, S = longhorn_recurrence(u, beta, k, q, S_prev, mode=mode, chunk_size=4)
        S_star = _minimiser(S_prev[0], k[0, 0], u[0, 0], beta[0, 0])
        assert (S[0] - S_star).abs().max() < 1e-13
        S_req = S[0].clone().requires_grad_()
        (grad,) = torch.autograd.grad(_objective(S_req, S_prev[0], k[0, 0], u[0, 0],
                                                 beta[0, 0]), S_req)
        assert grad.abs().max() < 1e-12
    k = torch.randn(1, 1, m, dtype=f64)
    _, S = longhorn_recurrence(u, beta, k, q, S_prev, mode=mode, chunk_size=4)
    S_star = _minimiser(S_prev[0], k[0, 0], u[0, 0], beta[0, 0])
    kv, P = k[0, 0], S_prev[0]
    eps = beta[0, 0] / (1 + beta[0, 0] * kv.dot(kv))
    off_diagonal = eps[:, None] * kv * ((P @ kv)[:, None] - P * kv)
    assert (S[0] - S_star).abs().max() > 1e-3
    assert (S[0] - (S_star + off_diagonal)).abs().max() < 1e-13


def test_long_sequence_log_decay_stays_finite_with_large_steps():
    """beta near 1 with long keys: 1 - eps k_j^2 nears 0 yet the log-decay stays finite, so
    the chunk form equals the loop."""
    torch.manual_seed(2)
    B, T, d, m = 1, 12, 3, 4
    u, q = torch.randn(B, T, d, dtype=f64), torch.randn(B, T, m, dtype=f64)
    beta = torch.full((B, T, d), 0.999, dtype=f64)
    k = torch.zeros(B, T, m, dtype=f64)
    k[..., 0] = 1e3                                                   # 1 - eps k^2 ~ 1e-9
    S0 = torch.randn(B, d, m, dtype=f64)
    y_ref, S_ref = longhorn_recurrence(u, beta, k, q, S0)
    for mode in ("scan", "chunk"):
        y, S = longhorn_recurrence(u, beta, k, q, S0, mode=mode, chunk_size=4)
        assert torch.isfinite(y).all() and (y - y_ref).abs().max() < 1e-9 * y_ref.abs().max()
        assert (S - S_ref).abs().max() < 1e-9 * S_ref.abs().max()


def test_options_checked():
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        rnnzoo.create("longhorn", d_model=8, d_state=0)
    with pytest.raises(ValueError, match="dt_rank"):
        rnnzoo.create("longhorn", d_model=8, dt_rank=-1)
