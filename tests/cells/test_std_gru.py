"""GRU v1 against torch.nn.GRU; v3's reset placement against the paper's equation."""

import torch

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
