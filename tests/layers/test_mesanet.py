"""MesaNet (arXiv:2506.05233): fla's naive chunkwise CG MesaNet and its one-step decoding on the
layer's own tensors; the CG solve reaches the closed-form least-squares readout
(torch.linalg.solve on the same H_t, G_t), which is the minimiser of the regression loss."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.mesa import mesa, mesa_recurrent


def _layer(**options):
    torch.manual_seed(0)
    layer = rnnzoo.create("mesanet", d_model=16, num_heads=2, head_dim=8, chunk_size=8, **options)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def test_layer_equals_fla_naive_mesanet():
    """On the block's q, k, v, g, beta, lambda and a random starting (H, G): fla-core 0.6.0's
    naive_mesa_net_CG (chunkwise CG from 0 with its 1e-5 guards) equals both ops given the
    same guard (eps=1e-5); the layer (its own CG guard, 30 steps, K = 8) equals
    fla's naive_mesa_net_exact (torch.linalg.solve) in every mode."""
    naive = pytest.importorskip("fla.ops.mesa_net.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    layer = _layer()
    x = torch.randn(2, 24, 16)
    Hkk, Hkv, conv = layer.init_state(2)
    k0 = torch.randn(2, 2, 8, 8)
    Hkk, Hkv = k0 @ k0.transpose(-1, -2) / 8, torch.randn_like(Hkv)   # H stays PSD
    q, k, v, g, beta, lamb, _ = layer.op_inputs(x, conv)
    with torch.no_grad():
        o_cg, Hkk_ref, Hkv_ref = naive.naive_mesa_net_CG(q, k, v, g, lamb, beta, chunk_size=8,
                                                         max_CG_iteration=30, h_kk_init=Hkk,
                                                         h_kv_init=Hkv)
        for op in (mesa_recurrent, lambda *a, **kw: mesa(*a, chunk_size=8, **kw)):
            o, (Hkk_ours, Hkv_ours) = op(q, k, v, g, beta, lamb, initial_state=(Hkk, Hkv),
                                         cg_steps=30, eps=1e-5)
            assert (o - o_cg).abs().max() < 1e-5 * o_cg.abs().max()
            assert (Hkk_ours - Hkk_ref).abs().max() < 1e-5 * Hkk_ref.abs().max()
            assert (Hkv_ours - Hkv_ref).abs().max() < 1e-5 * Hkv_ref.abs().max()
        o_exact, _, _ = naive.naive_mesa_net_exact(q, k, v, g, lamb, beta, h_kk_init=Hkk,
                                                   h_kv_init=Hkv)
        y_ref = layer.op_output(o_exact, x)
        for mode in layer.modes:
            y, _ = layer(x, (Hkk, Hkv, conv), mode=mode)
            assert (y - y_ref).abs().max() < 1e-4 * y_ref.abs().max()


@pytest.mark.parametrize("op", [mesa_recurrent, lambda *a, **kw: mesa(*a, chunk_size=4, **kw)],
                         ids=["recurrent", "chunk"])
def test_cg_reaches_the_closed_form_least_squares_readout(op):
    """With K CG steps (exact arithmetic: exact) the readout is G_t^T (H_t + diag(lambda))^{-1}
    q_t from torch.linalg.solve on the same H_t, G_t, and that W_t = G_t^T (H_t + Lambda)^{-1}
    zeroes the gradient of the decayed ridge loss sum_s beta_s e^{..} |W k_s - v_s|^2 +
    |W Lambda^(1/2)|^2; with one CG step it does not. The ops' default guard (1e-10 |q|^2 on
    the CG ratios) stops the residual near 1e-5 |q|; a guard at 1e-300 shows CG itself exact."""
    torch.manual_seed(0)
    B, T, H, K, V = 2, 10, 2, 5, 3
    f64 = torch.float64
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, dtype=f64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, V, dtype=f64)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, dtype=f64) + 2)
    beta = torch.rand(B, T, H, dtype=f64)
    lamb = torch.rand(H, K, dtype=f64) + 0.25
    # H_t, G_t and the closed form, from the definitions
    Hs, Gs, Hkk, Hkv = [], [], torch.zeros(B, H, K, K, dtype=f64), torch.zeros(B, H, K, V, dtype=f64)
    for t in range(T):
        kb = beta[:, t, :, None, None] * k[:, t, :, :, None]
        Hkk = g[:, t].exp()[..., None, None] * Hkk + kb * k[:, t, :, None, :]
        Hkv = g[:, t].exp()[..., None, None] * Hkv + kb * v[:, t, :, None, :]
        Hs.append(Hkk)
        Gs.append(Hkv)
    Hs, Gs = torch.stack(Hs, 1), torch.stack(Gs, 1)             # (B, T, H, K, K), (B, T, H, K, V)
    A = Hs + torch.diag_embed(lamb)
    closed = (torch.linalg.solve(A, q[..., None]).transpose(-1, -2) @ Gs)[..., 0, :]
    W = Gs.transpose(-1, -2) @ torch.linalg.inv(A)               # (B, T, H, V, K)
    grad = W @ A - Gs.transpose(-1, -2)                          # d/dW of the ridge loss / 2
    assert grad.abs().max() < 1e-12
    o, _ = op(q, k, v, g, beta, lamb, cg_steps=3 * K, eps=1e-300)
    assert (o - closed).abs().max() < 1e-12
    o, _ = op(q, k, v, g, beta, lamb, cg_steps=3 * K)
    assert (o - closed).abs().max() < 1e-5
    o1, _ = op(q, k, v, g, beta, lamb, cg_steps=1)
    assert (o1 - closed).abs().max() > 1e-3


def test_options_checked():
    with pytest.raises(ValueError, match="max_cg_steps must be a positive int"):
        rnnzoo.create("mesanet", d_model=8, max_cg_steps=0)
    with pytest.raises(ValueError, match="lambda_lower_bound must be below"):
        rnnzoo.create("mesanet", d_model=8, lambda_lower_bound=1.5)
