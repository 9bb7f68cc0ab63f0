"""GRU v1 against torch.nn.GRU; v3's reset placement against the paper's equation; MiRU2
without reset as a linear filter; tau-GRU's delay line."""

import torch
from _cells import D, H, T, data, perturbed

import rnnzoo
from rnnzoo.cells.gru import GRUCell, GRUv3Cell


def test_gru_modes_equal_torch_gru_float64():
    torch.manual_seed(0)
    layer = rnnzoo.create("gru", d_model=5, hidden_size=4).double()
    peer = torch.nn.GRU(5, 4, batch_first=True).double()
    peer.load_state_dict({f"{k}_l0": v for k, v in layer.cell.state_dict().items()})
    x = torch.randn(3, 20, 5, dtype=torch.float64)
    h0 = torch.randn(3, 4, dtype=torch.float64)
    y_peer, h = peer(x, h0[None])
    for mode in layer.modes:
        y, h_ = layer(x, h0, mode=mode)
        assert (y - layer.out_proj(y_peer)).abs().max() < 1e-12
        assert (h_ - h[0]).abs().max() < 1e-12


def test_gru_v3_is_the_papers_reset_placement():
    """Cho et al. eq. 8: h~ = tanh(W x + U (r * h)); v1 differs exactly by r placement."""
    torch.manual_seed(0)
    v3, v1 = GRUv3Cell(3, 4).double(), GRUCell(3, 4).double()
    v1.load_state_dict(v3.state_dict())
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    W, U = v3.weight_ih, v3.weight_hh
    bi, bh = v3.bias_ih, v3.bias_hh
    r = torch.sigmoid(x @ W[:4].T + bi[:4] + h @ U[:4].T + bh[:4])
    z = torch.sigmoid(x @ W[4:8].T + bi[4:8] + h @ U[4:8].T + bh[4:8])
    n = torch.tanh(x @ W[8:].T + bi[8:] + (r * h) @ U[8:].T + bh[8:])
    expected = (1 - z) * n + z * h
    assert (v3.step(x, (h,))[0] - expected).abs().max() < 1e-14
    assert (v1.step(x, (h,))[0] - expected).abs().max() > 1e-3  # the placements differ
    # with the reset gate forced open (r = 1) the two placements agree
    with torch.no_grad():
        for c in (v1, v3):
            c.bias_ih[:4] = 1e3
    assert (v3.step(x, (h,))[0] - v1.step(x, (h,))[0]).abs().max() < 1e-12


def test_miru2_without_reset_is_a_linear_filter_of_the_input():
    """With beta = 0 the candidate reads only x_t: h_T = l^T h_0 + (1-l) sum_t l^(T-1-t) c_t."""
    lam = 0.7
    cell = perturbed("miru2", update_coefficient=lam, reset_coefficient=0.0)
    x, s0 = data()
    _, (h_T,) = cell.loop(x, s0)
    cand = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh)
    expected = lam ** T * s0[0] + (1 - lam) * sum(lam ** (T - 1 - t) * cand[:, t]
                                                   for t in range(T))
    assert torch.allclose(h_T, expected, atol=1e-13, rtol=0)


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
