"""LTC (Hasani et al. 2021) and CfC (Hasani et al. 2022)."""

import pytest
import torch

from rnnzoo.cells.continuous_time import CfCCell, LTCCell


def test_ltc_fused_solver_closed_form_with_constant_f():
    """With W_ih = W_hh = 0, f = sigma(b) is constant and the fused solver's update is the
    affine map x <- (x + D f A) / (1 + D (1/tau + f)): after n = T * ode_unfolds updates,
    x - x* = (x_0 - x*) / (1 + D (1/tau + f))^n with the ODE's fixed point
    x* = f A / (1/tau + f)."""
    torch.manual_seed(0)
    cell = LTCCell(3, 4, ode_unfolds=5, dt=0.7).double()
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.tau_raw.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    f, leak = torch.sigmoid(cell.bias), 1 / cell.tau
    x_star = f * cell.reversal / (leak + f)
    x0 = torch.randn(2, 4, dtype=torch.float64)
    T, D = 9, 0.7 / 5
    y, _ = cell(torch.randn(2, T, 3, dtype=torch.float64), (x0,))
    n = torch.arange(1, T + 1, dtype=torch.float64)[:, None] * 5
    expected = x_star + (x0[:, None] - x_star) / (1 + D * (leak + f)) ** n
    assert (y - expected).abs().max() < 1e-14


def test_ltc_state_stays_bounded_by_the_reversal_potentials():
    """Hasani et al. theorem 2: the state stays within [min(0, A), max(0, A)] envelopes."""
    torch.manual_seed(0)
    cell = LTCCell(3, 4).double()
    x = 10 * torch.randn(2, 300, 3, dtype=torch.float64)
    y, _ = cell(x, cell.init_state(2, dtype=torch.float64))
    A = cell.reversal.detach()
    assert (y <= torch.clamp(A, min=0) + 1e-12).all() and (y >= torch.clamp(A, max=0) - 1e-12).all()


@pytest.mark.parametrize("backbone_units", [0, 3])
def test_cfc_step_is_the_closed_form(backbone_units):
    torch.manual_seed(0)
    cell = CfCCell(2, 4, backbone_units=backbone_units, dt=0.5).double()
    x, h = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    u = x @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias
    if backbone_units:
        u = 1.7159 * torch.tanh(0.666 * u) @ cell.weight_heads.T + cell.bias_heads
    f, g, hh = u[:, :4], u[:, 4:8], u[:, 8:]
    gate = torch.sigmoid(-f * 0.5)
    expected = gate * torch.tanh(g) + (1 - gate) * torch.tanh(hh)
    assert (cell.step(x, (h,))[0] - expected).abs().max() < 1e-14
