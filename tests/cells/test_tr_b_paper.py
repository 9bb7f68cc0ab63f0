"""Facts from the papers of the second half of the torchrecurrent catalogue, each
one that only a correct implementation has: hand-computed steps from the papers'
equations (SCRN, where torchrecurrent departs from the paper), closed forms
(RAN's weighted sum of contents, SCRN's context, the 1997 LSTM's running sum,
MiRU2 without reset), UnICORNN's exact time reversibility, tau-GRU's delay line
and the Residual LSTM's shortcut.
"""

from __future__ import annotations

import pytest
import torch

import rnnzoo
import rnnzoo.layers.classic  # noqa: F401  (imports every cell module)
from rnnzoo.registry import CELLS

B, T, D, H = 2, 6, 3, 4


def make(name, seed=0, **options):
    torch.manual_seed(seed)
    cell = CELLS[name].cls(D, H, **options).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return cell


def data(seed=3, n_state=(H,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    s0 = tuple(torch.randn(B, n, generator=g, dtype=torch.float64) for n in n_state)
    return x, s0


def test_scrn_follows_the_paper():
    """Mikolov et al. 2015: s_t = (1-a) B x_t + a s_{t-1},
    h_t = sigmoid(P s_t + A x_t + R h_{t-1}), y_t = tanh(U h_t + V s_t), computed by hand."""
    cell = make("scrn", context_size=3, alpha=0.8)
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
    cell = make("scrn", alpha=0.5)
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
    cell = make("scrn", alpha=a)
    x, s0 = data(n_state=(H, H))
    _, (_, s_T) = cell.loop(x, s0)
    inputs = x @ cell.weight_ih[:H].T + cell.bias_ih[:H]
    expected = a ** T * s0[1] + (1 - a) * sum(a ** (T - 1 - t) * inputs[:, t] for t in range(T))
    assert torch.allclose(s_T, expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("nonlinearity", ["tanh", "identity"])
def test_ran_state_is_a_gated_sum_of_contents(nonlinearity):
    """Lee et al. 2017: c_T = sum_j (i_j prod_{k>j} f_k) W_cx x_j + (prod_k f_k) c_0:
    the state is a component-wise weighted sum of the input's linear contents."""
    cell = make("ran", nonlinearity=nonlinearity)
    x, s0 = data(n_state=(H, H))
    ys, (_, c_T) = cell.loop(x, s0)
    hs = torch.cat([s0[0].unsqueeze(1), ys[:, :-1]], 1)  # h_{t-1} for every t
    gates = x @ cell.weight_ih[H:].T + cell.bias_ih + cell.bias_hh + hs @ cell.weight_hh.T
    i, f = torch.sigmoid(gates).chunk(2, -1)
    contents = x @ cell.weight_ih[:H].T
    expected = f.prod(1) * s0[1]
    for j in range(T):
        expected = expected + i[:, j] * f[:, j + 1:].prod(1) * contents[:, j]
    assert torch.allclose(c_T, expected, atol=1e-13, rtol=0)


def test_original_lstm_cell_is_a_running_sum():
    """Hochreiter & Schmidhuber 1997 (no forget gate): c_T = c_0 + sum_t i_t * g_t."""
    cell = make("original_lstm")
    x, s0 = data(n_state=(H, H))
    ys, (_, c_T) = cell.loop(x, s0)
    hs = torch.cat([s0[0].unsqueeze(1), ys[:, :-1]], 1)
    i, g, _ = (x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh + hs @ cell.weight_hh.T
               ).chunk(3, -1)
    assert torch.allclose(c_T, s0[1] + (torch.sigmoid(i) * torch.tanh(g)).sum(1),
                          atol=1e-13, rtol=0)


def test_miru2_without_reset_is_a_linear_filter_of_the_input():
    """With beta = 0 the candidate reads only x_t: h_T = l^T h_0 + (1-l) sum_t l^(T-1-t) c_t."""
    lam = 0.7
    cell = make("miru2", update_coefficient=lam, reset_coefficient=0.0)
    x, s0 = data()
    _, (h_T,) = cell.loop(x, s0)
    cand = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh)
    expected = lam ** T * s0[0] + (1 - lam) * sum(lam ** (T - 1 - t) * cand[:, t]
                                                   for t in range(T))
    assert torch.allclose(h_T, expected, atol=1e-13, rtol=0)


def test_unicornn_runs_backwards_exactly():
    """Rusch & Mishra 2021: the symplectic-Euler step is invertible,
    y_{n-1} = y_n - dt s z_n,  z_{n-1} = z_n + dt s [tanh(w y_{n-1} + V u_n + b) + alpha y_{n-1}],
    so the initial state is recovered from the final one and the inputs alone."""
    cell = make("unicornn", dt=0.4, alpha=2.0)
    x, s0 = data(n_state=(H, H))
    _, (y, z) = cell.loop(x, s0)
    step = cell.dt * torch.sigmoid(cell.weight_ch)
    pre = x @ cell.weight_ih.T + cell.bias_ih
    for t in reversed(range(T)):
        y = y - step * z
        z = z + step * (torch.tanh(cell.weight_hh * y + pre[:, t]) + cell.alpha * y)
    assert torch.allclose(y, s0[0], atol=1e-12, rtol=0)
    assert torch.allclose(z, s0[1], atol=1e-12, rtol=0)


def test_taugru_reads_the_state_exactly_delay_steps_back():
    """Erichson et al. 2022: z_n reads h_{n-d}. With d = 2, h_{-1} (state[1]) cannot touch
    the first output, h_{-2} (state[2]) does; h_{-1} reaches the output one step later."""
    layer = rnnzoo.create("taugru", d_model=D, hidden_size=H, delay=2).double()
    x, (h0, h1, h2) = data(n_state=(H, H, H))
    y, _ = layer(x, (h0, h1, h2))
    y1, _ = layer(x, (h0, h1 + 1.0, h2))
    y2, _ = layer(x, (h0, h1, h2 + 1.0))
    assert torch.equal(y1[:, 0], y[:, 0]) and (y1[:, 1] - y[:, 1]).abs().max() > 1e-6
    assert (y2[:, 0] - y[:, 0]).abs().max() > 1e-6


def test_res_lstm_output_is_a_gated_input_shortcut_when_the_projection_is_zero():
    """Kim et al. 2017: h_t = o_t * (W_p tanh(c_t) + W_h x_t); with W_p = 0 the
    output is the output gate times the input shortcut."""
    cell = make("res_lstm")
    with torch.no_grad():
        cell.weight_proj.zero_()
    x, s0 = data(n_state=(H, H))
    ys, _ = cell.loop(x, s0)
    shortcut = x @ cell.weight_res.T
    ratio = ys / shortcut
    assert ((ratio > 0) & (ratio < 1)).all()  # o_t in (0, 1), element-wise
