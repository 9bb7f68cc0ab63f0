"""SRU (Lei et al. 2018) and QRNN (Bradbury et al. 2017): the equations by hand."""

import pytest
import torch
from _cells import second_derivative_matches

from rnnzoo.cells.quasi import QRNNCell, SRUCell, _SRUCellState, _TapSum


def _perturbed(cell):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


@pytest.mark.parametrize("input_size", [4, 3])
def test_sru_step_is_the_papers_equation(input_size):
    torch.manual_seed(0)
    cell = _perturbed(SRUCell(input_size, 4).double())
    x = torch.randn(2, input_size, dtype=torch.float64)
    h, c = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    W = cell.weight_ih
    v_f, v_r = cell.weight_hc.chunk(2)
    b_f, b_r = cell.bias.chunk(2)
    f = torch.sigmoid(x @ W[4:8].T + v_f * c + b_f)
    r = torch.sigmoid(x @ W[8:12].T + v_r * c + b_r)
    c1 = f * c + (1 - f) * (x @ W[:4].T)
    skip = x if input_size == 4 else x @ W[12:].T
    h1 = r * c1 + (1 - r) * skip
    _, (h_, c_) = cell.step(x, (h, c))
    assert (c_ - c1).abs().max() < 1e-14 and (h_ - h1).abs().max() < 1e-14


@pytest.mark.parametrize("window", [1, 2, 3])
def test_qrnn_is_a_masked_convolution_then_fo_pooling(window):
    """Gates from a causal conv1d of width `window` (zero before the start), then
    c_t = f c + (1 - f) z, h_t = o c, in both modes."""
    torch.manual_seed(0)
    cell = _perturbed(QRNNCell(3, 4, window=window).double())
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    taps = cell.weight_ih.view(window, 12, 3)
    kernel = taps.flip(0).permute(1, 2, 0)  # conv1d weight (12, 3, window), tap m at x_{t-m}
    pre = torch.nn.functional.conv1d(x.transpose(1, 2), kernel, cell.bias, padding=window - 1)
    pre = pre[..., :7].transpose(1, 2)
    z, f, o = torch.tanh(pre[..., :4]), torch.sigmoid(pre[..., 4:8]), torch.sigmoid(pre[..., 8:])
    c, hs = torch.zeros(2, 4, dtype=torch.float64), []
    for t in range(7):
        c = f[:, t] * c + (1 - f[:, t]) * z[:, t]
        hs.append(o[:, t] * c)
    expected = torch.stack(hs, 1)
    s0 = cell.init_state(2, dtype=torch.float64)
    for fused in (False, True):
        y, _ = cell(x, s0, fused=fused)
        assert (y - expected).abs().max() < 1e-14


@pytest.mark.parametrize("window,T", [(1, 3), (2, 1), (3, 1), (3, 5), (4, 2)])
def test_qrnn_fused_equals_its_loop_and_gradcheck(window, T):
    """The fused mode's convolution (one buffer of tap sums, `_TapSum`) against the step
    loop, carry included, on sequences shorter than the window; float64 gradcheck."""
    torch.manual_seed(0)
    cell = _perturbed(QRNNCell(3, 4, window=window).double())
    x = torch.randn(2, T, 3, dtype=torch.float64, requires_grad=True)
    s0 = tuple(torch.randn(2, n, dtype=torch.float64, requires_grad=True)
               for n in cell.state_sizes)

    def run(fused):
        return lambda x, *s: (lambda y, s: (y, *s))(*cell(x, s, fused=fused))

    for a, b in zip(run(True)(x, *s0), run(False)(x, *s0)):
        assert (a - b).abs().max() < 1e-12
    assert torch.autograd.gradcheck(run(True), (x, *s0))



def test_sru_state_and_tap_sum_second_derivatives():
    """Their backwards are written in differentiable ops over the saved inputs and output
    (the SRU's adjoint a linear scan): plain torch.autograd.Functions, right twice."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    second_derivative_matches(lambda *a: (_SRUCellState.apply(*a),), [r(2, 4, 3), r(2, 4, 3),
                                                                     r(3), r(2, 3)])
    second_derivative_matches(lambda t, c: (_TapSum.apply(t, c).square(),),
                              [r(2, 4, 2, 3), r(2, 1, 3)])
