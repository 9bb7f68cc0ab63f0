"""PGN (Jia et al. 2024): the paper's HIE + gated unit written out, and its O(1) propagation
path: every past input in the window reaches the output through one HIE map."""

import pytest
import torch
from _twice import check_layer_twice, check_twice

import rnnzoo
from rnnzoo.layers.pgn import _GatedUnit, hie_fft

F64 = torch.float64


def make(window=4, d_model=3, d_hidden=5, seed=0):
    torch.manual_seed(seed)
    return rnnzoo.create("pgn", d_model=d_model, d_hidden=d_hidden, window_size=window).double()


def oracle(layer, x, history):
    """The paper's equations from the raw parameters: zeros (or the state) before the
    sequence, H_t = b + sum_k M_k x_{t-k}, the gated unit, W_out."""
    W = layer.window_size
    seq = torch.cat([history, x], 1)
    M = layer.hie_weight                                     # M[:, :, W - k] = M_k
    out = []
    for t in range(x.shape[1]):
        H = layer.hie_bias + sum(seq[:, W + t - k] @ M[:, :, W - k].T for k in range(1, W + 1))
        z = layer.gate.weight @ torch.cat([x[:, t], H], -1).T
        g, c = (z.T + layer.gate.bias).split(layer.d_hidden, -1)
        o = torch.sigmoid(g) * H + (1 - torch.sigmoid(g)) * torch.tanh(c)
        out.append(layer.out_proj(o))
    return torch.stack(out, 1), seq[:, -W:]


@pytest.mark.parametrize("mode", ["sequential", "conv"])
def test_matches_the_papers_equations(mode):
    layer = make()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 3, generator=g, dtype=F64)
    h0 = torch.randn(2, 4, 3, generator=g, dtype=F64)
    with torch.no_grad():
        want, s_want = oracle(layer, x, h0)
        got, s = layer(x, h0, mode=mode)
    assert (got - want).abs().max() < 1e-12 and torch.equal(s, s_want)


def test_conv_equals_sequential_with_padding():
    layer = make(window=6)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 20, 3, generator=g, dtype=F64)
    h0 = torch.randn(3, 6, 3, generator=g, dtype=F64)
    lengths = torch.tensor([20, 3, 0])
    y_s, s_s = layer(x, h0, mode="sequential", lengths=lengths)
    y_c, s_c = layer(x, h0, mode="conv", lengths=lengths)
    assert (y_s - y_c).abs().max() < 1e-12 and torch.equal(s_s, s_c)
    assert torch.equal(s_c[1], torch.cat([h0[1, 3:], x[1, :3]])) and torch.equal(s_c[2], h0[2])


@pytest.mark.parametrize("mode", ["sequential", "conv"])
def test_every_past_input_is_one_map_away(mode):
    """The paper's claim (section 3): PGN's information path is O(1). For each lag
    1 <= k <= W, dy_t/dx_{t-k} = W_out J_t M_k with the same J_t = do_t/dH_t for all k (an RNN
    multiplies k step Jacobians); beyond the window the input has no effect at all."""
    W, T = 5, 9
    layer = make(window=W)
    x = torch.randn(1, T, 3, dtype=F64)
    t = T - 1
    jac = torch.autograd.functional.jacobian(lambda z: layer(z, mode=mode)[0][0, t], x)[:, 0]
    # J_t in closed form from the gated unit at step t
    H = layer.hie(x, layer.init_state(1, dtype=F64), "conv")[0][0, t]
    gc = layer.gate(torch.cat([x[0, t], H]))
    g, c = torch.sigmoid(gc[:5]), torch.tanh(gc[5:])
    Wg, Wc = layer.gate.weight[:5, 3:], layer.gate.weight[5:, 3:]
    J = torch.diag(g) + torch.diag((H - c) * g * (1 - g)) @ Wg + torch.diag((1 - g) * (1 - c**2)) @ Wc
    for k in range(1, W + 1):
        want = layer.out_proj.weight @ J @ layer.hie_weight[:, :, W - k]
        assert (jac[:, t - k] - want).abs().max() < 1e-12
        assert want.abs().max() > 1e-3
    assert jac[:, : t - W].abs().max() == 0


def test_options_are_checked():
    with pytest.raises(ValueError, match="window_size"):
        rnnzoo.create("pgn", d_model=2, window_size=0)
    with pytest.raises(ValueError, match="d_hidden"):
        rnnzoo.create("pgn", d_model=2, d_hidden=-1)


def test_gated_unit_backward_by_hand_equals_autograd():
    from rnnzoo.layers.pgn import _GatedUnit
    g = torch.Generator().manual_seed(3)
    gc = (3 * torch.randn(2, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    H = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s, c = torch.sigmoid(gc[..., :3]), torch.tanh(gc[..., 3:])
    want = s * H + (1 - s) * c
    got = _GatedUnit.apply(gc, H)
    assert (got - want).abs().max() < 1e-14
    do = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (gc, H), do), torch.autograd.grad(want, (gc, H), do)):
        assert (a - b).abs().max() < 1e-14


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).requires_grad_()


def test_gated_unit_and_hie_fft_second_derivatives():
    """create_graph runs their `twice` (the plain gate; the direct convolution)."""
    check_twice(_GatedUnit.apply, (_r(2, 3, 8), _r(2, 3, 4, seed=1)))
    check_twice(lambda xp, w: hie_fft(xp, w, 2), (_r(2, 6, 3), _r(4, 3, 3, seed=1)))


@pytest.mark.parametrize("mode", ["sequential", "conv", "fft"])
def test_pgn_second_derivative(mode):
    """Every mode differentiable twice, in x and the parameters; the gate's input is computed
    from H, which `_GatedUnit` also takes: each input's own use only (ops.first_order.replay)."""
    layer = rnnzoo.create("pgn", d_model=3, d_hidden=4, window_size=3).double()
    check_layer_twice(layer, _r(1, 4, 3), mode)
