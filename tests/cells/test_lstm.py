"""The LSTM family: torch.nn.LSTM (with proj_size), torchrecurrent's PeepholeLSTM (lstm with
peepholes, which is also peephole_lstm), CIFG, JANET's chrono init, the 1997 LSTM's running
sum and the Residual LSTM's shortcut."""

import math

import pytest
import torch
from _cells import H, data, perturbed

import rnnzoo
from rnnzoo.cells.lstm import CIFGLSTMCell, LSTMCell, PeepholeLSTMCell
from rnnzoo.registry import CELLS


def _modes_equal_torch(layer, peer, x, s0):
    y_peer, (h, c) = peer(x, tuple(s[None] for s in s0))
    y_peer = layer.out_proj(y_peer)
    for mode in layer.modes:
        y, (h_, c_) = layer(x, s0, mode=mode)
        assert (y - y_peer).abs().max() < 1e-12
        assert (h_ - h[0]).abs().max() < 1e-12 and (c_ - c[0]).abs().max() < 1e-12


@pytest.mark.parametrize("proj_size", [0, 3])
def test_lstm_modes_equal_torch_lstm_float64(proj_size):
    torch.manual_seed(0)
    layer = rnnzoo.create("lstm", d_model=5, hidden_size=4, proj_size=proj_size).double()
    peer = torch.nn.LSTM(5, 4, batch_first=True, proj_size=proj_size).double()
    peer.load_state_dict({f"{k}_l0": v for k, v in layer.cell.state_dict().items()})
    x = torch.randn(3, 20, 5, dtype=torch.float64)
    s0 = tuple(torch.randn(3, n, dtype=torch.float64) for n in layer.cell.state_sizes)
    _modes_equal_torch(layer, peer, x, s0)


def test_lstm_init_is_torchs():
    cell = LSTMCell(7, 16)
    bound = 16 ** -0.5
    assert all(p.abs().max() <= bound for p in cell.parameters())
    assert cell.weight_ih.std() > 0.8 * bound / 3 ** 0.5  # U(-b, b) has std b / sqrt(3)


def test_peephole_lstm_matches_torchrecurrent():
    tr = pytest.importorskip("torchrecurrent", reason="oracle: torchrecurrent 0.2.5 (bench extra)")
    torch.manual_seed(0)
    cell = LSTMCell(5, 4, peepholes=True).double()
    peer = tr.PeepholeLSTMCell(5, 4).double()
    peer.load_state_dict(cell.state_dict())  # same names and layouts: W (i, f, g, o), p (i, f, o)
    x = torch.randn(3, 9, 5, dtype=torch.float64, requires_grad=True)
    y, (h, c) = cell(x, cell.init_state(3, dtype=torch.float64))
    hp = cp = torch.zeros(3, 4, dtype=torch.float64)
    ys = []
    for t in range(9):
        hp, cp = peer(x[:, t], (hp, cp))
        ys.append(hp)
    y_peer = torch.stack(ys, 1)
    assert (y - y_peer).abs().max() < 1e-12 and (c - cp).abs().max() < 1e-12
    names = [n for n, _ in cell.named_parameters()]
    peer_params = dict(peer.named_parameters())
    g = torch.autograd.grad(y.sum(), [x, *cell.parameters()])
    g_peer = torch.autograd.grad(y_peer.sum(), [x, *(peer_params[n] for n in names)])
    for a, b in zip(g, g_peer):
        assert (a - b).abs().max() < 1e-12


def test_peepholes_see_the_cell_state():
    """With peepholes, the gates read c: changing c_0 alone (h_0 fixed, W_hh = 0) moves the
    gates; with only the output peephole p_o nonzero, c_1 is unchanged but h_1 is."""
    torch.manual_seed(0)
    cell = LSTMCell(2, 3, peepholes=True).double()
    with torch.no_grad():
        cell.weight_ph[:6] = 0  # p_i = p_f = 0
    x = torch.randn(1, 2, dtype=torch.float64)
    h0 = torch.zeros(1, 3, dtype=torch.float64)
    h_a, (_, c_a) = cell.step(x, (h0, torch.zeros(1, 3, dtype=torch.float64)))
    with torch.no_grad():
        cell.weight_ph[6:] = 0
    h_b, (_, c_b) = cell.step(x, (h0, torch.zeros(1, 3, dtype=torch.float64)))
    assert torch.equal(c_a, c_b) and not torch.allclose(h_a, h_b)


def test_cifg_hand_computed_step():
    cell = CIFGLSTMCell(1, 1).double()
    with torch.no_grad():  # rows i, g, o
        cell.weight_ih.copy_(torch.tensor([[1.0], [2.0], [-1.0]]))
        cell.weight_hh.copy_(torch.tensor([[0.5], [0.0], [1.0]]))
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
    x, h, c = 0.3, 0.2, -0.4
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    sig = lambda v: 1 / (1 + torch.exp(-torch.tensor(v, dtype=torch.float64)))  # noqa: E731
    i = sig(1.0 * x + 0.5 * h)
    c1 = (1 - i) * c + i * torch.tanh(torch.tensor(2.0 * x, dtype=torch.float64))
    h1 = sig(-x + h) * torch.tanh(c1)
    y, (h_, c_) = cell.step(t(x), (t(h), t(c)))
    assert abs(c_.item() - c1.item()) < 1e-14, (c_.item(), c1.item())
    assert abs(h_.item() - h1.item()) < 1e-14


def test_bad_options():
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size=4, got 4"):
        LSTMCell(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size must be a non-negative int, got -1"):
        LSTMCell(3, 4, proj_size=-1)
    with pytest.raises(TypeError, match="peepholes must be a bool"):
        LSTMCell(3, 4, peepholes=1)


def test_peephole_lstm_fused_equals_loop_with_gradients():
    """The conformance suite's tiny lstm has no peepholes; check that mode here."""
    torch.manual_seed(0)
    cell = LSTMCell(3, 4, peepholes=True, proj_size=2).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    s0 = tuple(torch.randn(2, n, dtype=torch.float64) for n in cell.state_sizes)
    results = []
    for fused in (False, True):
        y, (h, c) = cell(x, s0, fused=fused)
        loss = (y * torch.arange(7.0, dtype=torch.float64)[:, None]).sum() + (c ** 2).sum()
        results.append((y, c, torch.autograd.grad(loss, [x, *cell.parameters()])))
    (y0, c0, g0), (y1, c1, g1) = results
    assert (y0 - y1).abs().max() < 1e-13 and (c0 - c1).abs().max() < 1e-13
    assert all((a - b).abs().max() < 1e-12 for a, b in zip(g0, g1))


def test_janet_chrono_init_and_fixed_beta():
    """van der Westhuizen & Lasenby 2018: forget biases b_f = log(U(1, t_max - 1)),
    the rest 0; beta is a fixed shift, not a parameter."""
    cell = CELLS["janet"].cls(4, 64, t_max=50.0)
    b_f, b_c = cell.bias_ih.detach().chunk(2)
    assert (b_f >= 0).all() and (b_f <= math.log(49) + 1e-6).all() and b_f.std() > 0.3
    assert (b_c == 0).all() and (cell.bias_hh == 0).all()
    assert "beta" not in dict(cell.named_parameters()) and cell.beta == 1.0
    with pytest.raises(ValueError, match="t_max"):
        CELLS["janet"].cls(4, 5, t_max=1.5)


def test_original_lstm_cell_is_a_running_sum():
    """Hochreiter & Schmidhuber 1997 (no forget gate): c_T = c_0 + sum_t i_t * g_t."""
    cell = perturbed("original_lstm")
    x, s0 = data(n_state=(H, H))
    ys, (_, c_T) = cell.loop(x, s0)
    hs = torch.cat([s0[0].unsqueeze(1), ys[:, :-1]], 1)
    i, g, _ = (x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh + hs @ cell.weight_hh.T
               ).chunk(3, -1)
    assert torch.allclose(c_T, s0[1] + (torch.sigmoid(i) * torch.tanh(g)).sum(1),
                          atol=1e-13, rtol=0)


def test_res_lstm_output_is_a_gated_input_shortcut_when_the_projection_is_zero():
    """Kim et al. 2017: h_t = o_t * (W_p tanh(c_t) + W_h x_t); with W_p = 0 the
    output is the output gate times the input shortcut."""
    cell = perturbed("res_lstm")
    with torch.no_grad():
        cell.weight_proj.zero_()
    x, s0 = data(n_state=(H, H))
    ys, _ = cell.loop(x, s0)
    shortcut = x @ cell.weight_res.T
    ratio = ys / shortcut
    assert ((ratio > 0) & (ratio < 1)).all()  # o_t in (0, 1), element-wise


def test_peephole_lstm_is_lstm_with_peepholes():
    """One implementation: peephole_lstm with lstm(peepholes=True)'s weights runs the same."""
    torch.manual_seed(0)
    lstm = LSTMCell(3, 4, peepholes=True).double()
    peephole = PeepholeLSTMCell(3, 4).double()
    peephole.load_state_dict(lstm.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    s0 = lstm.init_state(2, dtype=torch.float64)
    assert torch.equal(lstm(x, s0)[0], peephole(x, s0)[0])
