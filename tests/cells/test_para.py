"""ParaRNN's cells (Danieli et al. 2025, arXiv:2510.21450): paragru and paralstm."""

from __future__ import annotations

import pytest
import torch
from _cells import F64

import rnnzoo
from rnnzoo.cells.para import ParaGRU, ParaLSTM
from rnnzoo.ops.newton import Layout, parallel_rnn, verify_structure


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_analytic_jacobian_and_structure_match_autograd(cls, heads):
    torch.manual_seed(heads)
    cell = cls(8, 12, num_heads=heads)
    with torch.no_grad():  # move off the initial values: large recurrent weights, peepholes
        for p in cell.parameters():
            p.add_(torch.randn_like(p))
    verify_structure(cell, batch=4)


def test_paralstm_blocks_pair_h_and_c_of_each_unit():
    lay = Layout(ParaLSTM(4, 3))
    z = torch.arange(6.0)  # flat state (h0 h1 h2 | c0 c1 c2)
    assert lay.to_blocks(z).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert torch.equal(lay.from_blocks(lay.to_blocks(z)), z)


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
def test_units_are_independent_and_heads_read_only_their_inputs(cls):
    """Diagonal recurrence: unit j's trajectory depends on no other unit's projected input;
    with heads, a head's units depend on no other head's input channels."""
    torch.manual_seed(0)
    cell = cls(6, 6, num_heads=3).double()
    x = torch.randn(1, 20, 6, dtype=F64, requires_grad=True)
    h, _ = cell.loop(x, cell.init_state(1, dtype=F64))
    # head 0 = units 0,1, reads input channels 0,1
    (gx,) = torch.autograd.grad(h[0, :, :2].sum(), x)
    assert gx[..., 2:].abs().max().item() == 0 and gx[..., :2].abs().max().item() > 0
    xp = cell.project(x.detach()).requires_grad_()
    state = cell.init_state(1, dtype=F64)
    for xp_t in xp.unbind(1):
        state = cell.recur(xp_t, state)
    (gxp,) = torch.autograd.grad(state[0][0, 0], xp)  # unit 0 at the end
    per_unit = gxp.reshape(1, 20, 3, 6).abs().sum((0, 1, 2))
    assert per_unit[1:].max().item() == 0 and per_unit[0].item() > 0


def test_states_stay_bounded_by_convex_combination():
    """h_t (ParaGRU) and c_t (ParaLSTM) are convex combinations of the previous value and a
    tanh, so from |h0| <= 1 they never leave [-1, 1], whatever the inputs."""
    torch.manual_seed(1)
    x = 50 * torch.randn(2, 500, 4, dtype=F64)
    gru, lstm = ParaGRU(4, 8).double(), ParaLSTM(4, 8).double()
    h, _ = gru.loop(x, gru.init_state(2, dtype=F64))
    assert h.abs().max().item() <= 1
    traj, _ = parallel_rnn(lstm, x, method="sequential")
    assert traj[1].abs().max().item() <= 1 and traj[0].abs().max().item() <= 1


def test_paralstm_is_cifg_with_peepholes():
    """Input gate = 1 - forget gate: with the cell candidate equal to c_{t-1} the cell state
    does not move whatever the forget gate is."""
    torch.manual_seed(2)
    cell = ParaLSTM(3, 5).double()
    c = torch.full((2, 5), 0.3, dtype=F64)
    xp = torch.randn(2, 15, dtype=F64)
    xp[:, 5:10] = torch.atanh(torch.tensor(0.3, dtype=F64))
    with torch.no_grad():
        cell.recurrent[1].zero_()  # candidate = tanh(x_c) = 0.3
    _, c_new = cell.recur(xp, (torch.randn(2, 5, dtype=F64), c))
    assert (c_new - c).abs().max().item() < 1e-15


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_newton_converges_in_few_iterations_at_long_T(name):
    layer = rnnzoo.create(name, d_model=8, hidden_size=16).double()
    x = torch.randn(2, 2048, 8, dtype=F64)
    y_ref, s_ref = layer(x, mode="sequential")
    y, s = layer(x, mode="newton")
    assert layer.solve_info.converged and layer.solve_info.iterations <= 6
    assert (y - y_ref).abs().max().item() < 1e-10
    # on CPU the loop is faster (the fused loop: its hand-written backward)
    assert layer.auto_mode(x) == "fused"


def test_bad_options():
    with pytest.raises(ValueError, match="num_heads must be a positive int dividing"):
        ParaGRU(6, 8, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        ParaLSTM(6, 6, num_heads=0)
