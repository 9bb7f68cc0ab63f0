"""SCRN (Mikolov et al. 2015): the paper's equations by hand, where torchrecurrent departs
from them, and the context's closed form."""

from __future__ import annotations

import pytest
import torch
from _cells import B, D, H, T, data, perturbed


def test_scrn_follows_the_paper():
    """Mikolov et al. 2015: s_t = (1-a) B x_t + a s_{t-1},
    h_t = sigmoid(P s_t + A x_t + R h_{t-1}), y_t = tanh(U h_t + V s_t), computed by hand."""
    cell = perturbed("scrn", context_size=3, alpha=0.8)
    x, (h, s) = data(n_state=(H, 3))
    Bm, A = cell.weight_ih[:3], cell.weight_ih[3:]
    R, U = cell.weight_hh[:H], cell.weight_hh[H:]
    P, V = cell.weight_ch[:H], cell.weight_ch[H:]
    b_s, b_h = cell.bias_ih[:3], cell.bias_ih[3:] + cell.bias_hh[:H]
    ys = []
    for t in range(T):
        s = 0.2 * (x[:, t] @ Bm.T + b_s) + 0.8 * s
        h = torch.sigmoid(s @ P.T + x[:, t] @ A.T + b_h + h @ R.T)
        ys.append(torch.tanh(h @ U.T + s @ V.T + cell.bias_hh[H:]))
    y, (h_T, s_T) = cell.loop(x, data(n_state=(H, 3))[1])
    assert torch.allclose(y, torch.stack(ys, 1), atol=1e-13, rtol=0)
    assert torch.allclose(h_T, h, atol=1e-13, rtol=0) and torch.allclose(s_T, s, atol=1e-13, rtol=0)


def test_scrn_differs_from_torchrecurrent_after_the_first_step():
    """torchrecurrent 0.2.5 feeds y_t (not the paper's h_t) into the next step: equal at
    t = 0 from a zero state, different afterwards."""
    tr = pytest.importorskip("torchrecurrent", reason="torchrecurrent==0.2.5 is the peer")
    cell = perturbed("scrn", alpha=0.5)
    peer = tr.SCRNCell(D, H).double()
    peer.load_state_dict(cell.state_dict(), strict=False)
    with torch.no_grad():
        peer.alpha.fill_(0.5)
    x, _ = data()
    y, _ = cell.loop(x, cell.init_state(B, dtype=torch.float64))
    state = (torch.zeros(B, H, dtype=torch.float64),) * 2
    ys = []
    for t in range(T):
        state = peer(x[:, t], state)
        ys.append(state[0])
    y_peer = torch.stack(ys, 1).detach()
    assert torch.allclose(y[:, 0], y_peer[:, 0], atol=1e-13)
    assert (y[:, 1:] - y_peer[:, 1:]).abs().max() > 1e-3


def test_scrn_context_is_an_exponential_moving_average():
    """s_T = a^T s_0 + (1 - a) sum_t a^(T-1-t) (B x_t + b)."""
    a = 0.9
    cell = perturbed("scrn", alpha=a)
    x, s0 = data(n_state=(H, H))
    _, (_, s_T) = cell.loop(x, s0)
    inputs = x @ cell.weight_ih[:H].T + cell.bias_ih[:H]
    expected = a ** T * s0[1] + (1 - a) * sum(a ** (T - 1 - t) * inputs[:, t] for t in range(T))
    assert torch.allclose(s_T, expected, atol=1e-13, rtol=0)
