"""LogLinearMamba2's level weights from dt's product (Mamba2._project's `extra` rows): the
projection's outputs and every gradient against the two separate projections' formula."""

import pytest
import torch
import torch.nn.functional as F

from rnnzoo import create


def _reference(layer, x, conv_state):
    """dt = softplus(x W_dt^T + dt_bias), lam = softplus(x W_lam^T + b_lam), as two products."""
    H = layer.num_heads
    dt = F.softplus(F.linear(x, layer.in_proj.weight[-H:]) + layer.dt_bias)
    lam = F.softplus(F.linear(x, layer.level_proj.weight, layer.level_proj.bias))
    xs = layer._project(x, conv_state, x.dtype)[4]
    return xs * dt[..., None], -dt * layer.A_log.exp(), lam.reshape(*x.shape[:2], H, -1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("d_model,head_dim,batch,T", [(32, 16, 2, 9), (16, 8, 1, 5)])
def test_levels_from_dt_product(dtype, tol, d_model, head_dim, batch, T):
    torch.manual_seed(0)
    layer = create("log_linear_mamba2", d_model=d_model, d_state=8, head_dim=head_dim,
                   num_levels=4).to(dtype)
    with torch.no_grad():  # not the init's constants, so a swapped bias or row block shows
        layer.level_proj.bias.uniform_(-1, 1)
        layer.level_proj.weight.normal_()
        layer.dt_bias.uniform_(-2, 0)
    x = torch.randn(batch, T, d_model, dtype=dtype, requires_grad=True)
    cs = layer.conv.init_state(batch, None, dtype)
    params = [x, layer.in_proj.weight, layer.dt_bias, layer.level_proj.weight,
              layer.level_proj.bias, layer.A_log]
    q, k, v, g, lam, _ = layer._group_inputs(x, cs)
    ref = _reference(layer, x, cs)
    got = (v, g, lam)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    ws = [torch.randn_like(t) for t in got]
    grads = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got, ws)), params)
    grads_ref = torch.autograd.grad(sum((a * w).sum() for a, w in zip(ref, ws)), params)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
