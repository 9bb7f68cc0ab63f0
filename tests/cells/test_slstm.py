"""sLSTM (Beck et al. 2024): xlstm's own vanilla PyTorch backend as the oracle, and the
stabiliser's two promises (no overflow, h unchanged)."""

import pytest
import torch

from rnnzoo.cells.slstm import SLSTMCell


def _perturbed(cell):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return cell


def test_slstm_matches_xlstm_vanilla_backend():
    vanilla = pytest.importorskip("xlstm.blocks.slstm.src.vanilla",
                                  reason="oracle: xlstm 2.0.6 (bench extra)")
    torch.manual_seed(0)
    cell = _perturbed(SLSTMCell(5, 8, num_heads=2).double())
    x = torch.randn(3, 10, 5, dtype=torch.float64)
    with torch.no_grad():  # a non-zero start: xlstm special-cases an all-zero n
        prefix = torch.randn(3, 2, 5, dtype=torch.float64)
        _, s0 = cell(prefix, cell.init_state(3, dtype=torch.float64))
    y, s = cell(x, s0)
    Wx = (x @ cell.weight_ih.T).transpose(0, 1)  # (S, B, 4H), gates i, f, z, o
    states_all, last, _ = vanilla.slstm_forward(
        Wx, torch.stack(s0), cell.weight_hh, cell.bias,
        vanilla.slstm_pointwise_function_registry["slstm"])
    assert (states_all[0, 1:].transpose(0, 1) - y).abs().max() < 1e-12
    for a, b in zip(s, last):
        assert (a - b).abs().max() < 1e-12


def test_slstm_stabiliser_keeps_h_and_avoids_overflow():
    """h equals the unstabilised sLSTM (c, n without m) on moderate inputs, and stays
    finite with input-gate pre-activations of 1000 where exp overflows."""
    torch.manual_seed(0)
    cell = _perturbed(SLSTMCell(3, 4, num_heads=2).double())
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    y, _ = cell(x, cell.init_state(2, dtype=torch.float64))
    R = cell.recurrent_matrix()
    h = c = n = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(12):
        i, f, z, o = (x[:, t] @ cell.weight_ih.T + cell.bias + h @ R.T).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.exp(i) * torch.tanh(z)
        n = torch.sigmoid(f) * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        assert (y[:, t] - h).abs().max() < 1e-12
    with torch.no_grad():
        cell.bias[:4] = 1000.0
    y, (_, c, n, m) = cell(x.float(), cell.float().init_state(2))
    assert torch.isfinite(y).all() and torch.isfinite(c).all() and torch.isfinite(n).all()


def test_slstm_recurrence_is_block_diagonal_over_heads():
    cell = SLSTMCell(3, 6, num_heads=3)
    R = cell.recurrent_matrix().view(4, 3, 2, 3, 2)  # (gate, head_out, ., head_in, .)
    off = [R[:, a, :, b] for a in range(3) for b in range(3) if a != b]
    assert all((blk == 0).all() for blk in off)
    with pytest.raises(ValueError, match="num_heads must divide hidden_size=6, got 4"):
        SLSTMCell(3, 6, num_heads=4)
