"""Layer-normalised LSTM and GRU (Ba et al. 2016): the equations, and LN's invariance."""

import torch
from torch.nn.functional import layer_norm

from rnnzoo.cells.normalized import LayerNormGRUCell, LayerNormLSTMCell


def _perturbed(cell):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


def test_ln_lstm_step_is_the_papers_equation():
    torch.manual_seed(0)
    cell = _perturbed(LayerNormLSTMCell(3, 4).double())
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (3, 4, 4))
    ln = lambda v, m: layer_norm(v, v.shape[-1:], m.weight, m.bias)  # noqa: E731
    a = ln(h @ cell.weight_hh.T, cell.ln_hh) + ln(x @ cell.weight_ih.T, cell.ln_ih)
    i, f, g, o = a.chunk(4, -1)
    c1 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h1 = torch.sigmoid(o) * torch.tanh(ln(c1, cell.ln_cell))
    y, (h_, c_) = cell.step(x, (h, c))
    assert (h_ - h1).abs().max() < 1e-14 and (c_ - c1).abs().max() < 1e-14


def test_ln_gru_step_is_the_equation():
    torch.manual_seed(0)
    cell = _perturbed(LayerNormGRUCell(3, 4).double())
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    ax = layer_norm(x @ cell.weight_ih.T, (12,), cell.ln_ih.weight, cell.ln_ih.bias)
    ah = layer_norm(h @ cell.weight_hh.T, (12,), cell.ln_hh.weight, cell.ln_hh.bias)
    r = torch.sigmoid(ax[:, :4] + ah[:, :4])
    z = torch.sigmoid(ax[:, 4:8] + ah[:, 4:8])
    n = torch.tanh(ax[:, 8:] + r * ah[:, 8:])
    assert (cell.step(x, (h,))[0] - ((1 - z) * n + z * h)).abs().max() < 1e-14


def test_layer_norm_makes_outputs_invariant_to_weight_rescaling():
    """Ba et al. 2016, table 1: layer normalisation is invariant to re-scaling a weight
    matrix. Scaling W_ih and W_hh by 7 changes nothing (exactly, with LayerNorm's eps 0)."""
    torch.manual_seed(0)
    for cls in (LayerNormLSTMCell, LayerNormGRUCell):
        cell = _perturbed(cls(3, 4).double())
        for m in cell.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 0.0
        x = torch.randn(2, 9, 3, dtype=torch.float64)
        s0 = tuple(torch.randn(2, n, dtype=torch.float64) for n in cell.state_sizes)
        y, _ = cell(x, s0)
        with torch.no_grad():
            cell.weight_ih.mul_(7)
            cell.weight_hh.mul_(7)
        y7, _ = cell(x, s0)
        assert (y - y7).abs().max() < 1e-12
        assert (y - cell(x.flip(1), s0)[0]).abs().max() > 1e-3  # not trivially constant
