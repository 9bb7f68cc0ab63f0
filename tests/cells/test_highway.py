"""Recurrent Highway Network (Zilly et al. 2017): the highway equations by hand, and the
carry behaviour; the Intersection RNN's highway output. (torchrecurrent 0.2.5 ships an RHNCell file but it does not import:
`from ..base import BaseRecurrentLayer` fails, so it cannot serve as an oracle.)"""

import pytest
import torch
from _cells import F64, randomised

from rnnzoo.cells.highway import RHNCell


def test_rhn_step_by_hand_and_carry():
    cell = RHNCell(1, 1, depth=2).double()
    with torch.no_grad():  # rows (H, T); weight_hh (depth, 2, 1)
        cell.weight_ih.copy_(torch.tensor([[2.0], [1.0]], dtype=torch.float64))
        cell.weight_hh.copy_(torch.tensor([[[0.5], [-1.0]], [[1.5], [0.3]]], dtype=torch.float64))
        cell.bias.copy_(torch.tensor([[0.1, 0.2], [-0.1, 0.0]], dtype=torch.float64))
    x, s = 0.7, -0.4
    T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    hh, t = torch.tanh(T(2 * x + 0.5 * s + 0.1)), torch.sigmoid(T(x - s + 0.2))
    s1 = hh * t + s * (1 - t)
    hh, t = torch.tanh(1.5 * s1 - 0.1), torch.sigmoid(0.3 * s1)
    s2 = hh * t + s1 * (1 - t)
    got = cell.step(T([[x]]), (T([[s]]),))[0]
    assert abs(got.item() - s2.item()) < 1e-15
    with torch.no_grad():  # transform gates shut: every micro-step carries the state
        cell.bias[:, 1] = -1e4
    assert cell.step(T([[x]]), (T([[s]]),))[0].item() == s


def test_rhn_bad_depth():
    with pytest.raises(ValueError, match="depth must be a positive int, got 0"):
        RHNCell(2, 3, depth=0)


def test_intersection_rnn_output_is_a_highway():
    """Collins et al. 2017: y_t = g_y x_t + (1 - g_y) relu(.); an open y-gate passes x_t
    through unchanged, whatever h holds. y has the input's width, h its own."""
    cell = randomised("intersection_rnn", input_size=4, hidden_size=6)
    with torch.no_grad():
        cell.bias_ih[4 + 6:4 + 6 + 4] = 60.0  # the y-gate's rows come after d (I) and r (H)
    x, h0 = torch.randn(2, 5, 4, dtype=F64), torch.randn(2, 6, dtype=F64)
    y, (y_last, h) = cell.loop(x, (torch.zeros(2, 4, dtype=F64), h0))
    torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    assert h.shape == (2, 6) and torch.equal(y_last, y[:, -1])
