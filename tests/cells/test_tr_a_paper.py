"""The papers' equations and one property each that only a correct cell has
(catalogue, first half). Steps are computed by hand from the papers'
equations, not from our code's layout tricks."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo.layers.classic  # noqa: F401  (imports every cell module)
from rnnzoo.registry import CELLS

F64 = torch.float64


def make(name, input_size=4, hidden_size=5, scale=0.6, **options):
    torch.manual_seed(0)
    cell = CELLS[name].cls(input_size, hidden_size, **options).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(scale * torch.randn_like(p))
    return cell


def step(cell, x, state):
    return cell.recur(cell.project(x), state)


def test_cornn_step_solves_the_imex_equation():
    """Rusch & Mishra 2021: z_n = z_{n-1} + dt (tanh(.) - gamma y_{n-1} - eps z_n),
    y_n = y_{n-1} + dt z_n: the damping is implicit in z_n."""
    dt, gamma, eps = 0.3, 0.7, 2.5
    cell = make("cornn", dt=dt, gamma=gamma, epsilon=eps)
    x, y0, z0 = (torch.randn(3, n, dtype=F64) for n in (4, 5, 5))
    y1, z1 = step(cell, x, (y0, z0))
    force = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + y0 @ cell.weight_hh.T + cell.bias_hh
                       + z0 @ cell.weight_ch.T + cell.bias_ch)
    residual = z1 - z0 - dt * (force - gamma * y0 - eps * z1)
    torch.testing.assert_close(residual, torch.zeros_like(residual), atol=1e-14, rtol=0)
    torch.testing.assert_close(y1, y0 + dt * z1, atol=1e-14, rtol=0)
    explicit = make("cornn", dt=dt, gamma=gamma, epsilon=eps, implicit_damping=False)
    assert not torch.allclose(step(explicit, x, (y0, z0))[1], z1)  # the two schemes differ


def test_lem_step_is_the_papers():
    """Rusch et al. 2022: y_n reads the new z_n."""
    dt = 0.7
    cell = make("lem", dt=dt)
    u, y0, z0 = (torch.randn(3, n, dtype=F64) for n in (4, 5, 5))
    V1, V2, Vz, Vy = cell.weight_ih.chunk(4)
    c1, c2, cz, cy = cell.bias_ih.chunk(4)
    W1, W2, Wz = cell.weight_hh.chunk(3)
    b1, b2, bz = cell.bias_hh.chunk(3)
    dt_y = dt * torch.sigmoid(y0 @ W1.T + b1 + u @ V1.T + c1)
    dt_z = dt * torch.sigmoid(y0 @ W2.T + b2 + u @ V2.T + c2)
    z1 = (1 - dt_z) * z0 + dt_z * torch.tanh(y0 @ Wz.T + bz + u @ Vz.T + cz)
    y1 = (1 - dt_y) * y0 + dt_y * torch.tanh(z1 @ cell.weight_ch.T + cell.bias_ch + u @ Vy.T + cy)
    got_y, got_z = step(cell, u, (y0, z0))
    torch.testing.assert_close(got_z, z1, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(got_y, y1, rtol=1e-13, atol=1e-14)


def test_antisymmetric_euler_step_grows_the_norm_exactly():
    """With phi = identity, gamma = 0 and no input, h^T A h = 0 for A = W - W^T, so
    ||h_t||^2 = ||h_{t-1}||^2 + eps^2 ||A h_{t-1}||^2 (forward Euler on a rotation)."""
    eps = 0.2
    cell = make("antisymmetric_rnn", epsilon=eps, gamma=0.0, nonlinearity="identity")
    with torch.no_grad():
        cell.weight_ih.zero_(), cell.bias_ih.zero_(), cell.bias_hh.zero_()
    h0 = torch.randn(3, 5, dtype=F64)
    h1 = step(cell, torch.zeros(3, 4, dtype=F64), (h0,))[0]
    a = cell.weight_hh - cell.weight_hh.T
    expected = (h0 ** 2).sum(-1) + eps ** 2 * ((h0 @ a.T) ** 2).sum(-1)
    torch.testing.assert_close((h1 ** 2).sum(-1), expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["antisymmetric_rnn", "gated_antisymmetric_rnn"])
def test_antisymmetric_cells_see_only_the_antisymmetric_part(name):
    """The recurrence uses W - W^T: adding a symmetric matrix to W changes nothing."""
    cell = make(name)
    x, h0 = torch.randn(2, 6, 4, dtype=F64), torch.randn(2, 5, dtype=F64)
    y = cell.loop(x, (h0,))[0]
    s = torch.randn(5, 5, dtype=F64)
    with torch.no_grad():
        cell.weight_hh += s + s.T
    torch.testing.assert_close(cell.loop(x, (h0,))[0], y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("b_a, bistable", [(2.0, True), (-2.0, False)])
def test_br_is_bistable_when_a_exceeds_one(b_a, bistable):
    """Vecoven et al. 2021: without input, h = tanh(a h) has two stable fixed points
    +-h* when a > 1 (the memory), and only 0 when a < 1."""
    cell = make("br", hidden_size=2)
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.bias_hh[:2] = b_a  # a = 1 + tanh(b_a); c = sigmoid(0) = 1/2
    a = 1 + math.tanh(b_a)
    fixed = 0.5
    for _ in range(2000):
        fixed = math.tanh(a * fixed)
    h = torch.tensor([[0.3, -0.3]], dtype=F64)
    for _ in range(300):
        h = step(cell, torch.zeros(1, 4, dtype=F64), (h,))[0]
    if bistable:
        assert fixed > 0.9
        torch.testing.assert_close(h, torch.tensor([[fixed, -fixed]], dtype=F64))
    else:
        assert h.abs().max() < 1e-6


def test_cfn_decays_monotonically_without_input():
    """Laurent & von Brecht 2017: with zero input, h_t = theta_t * tanh(h_{t-1}), so
    every |h_t| decreases strictly to 0 (no chaos)."""
    cell = make("cfn", scale=1.5)
    with torch.no_grad():
        cell.bias_ih[10:] = 0  # the candidate tanh(W x + b) is 0 at x = 0
    h = 2 * torch.randn(3, 5, dtype=F64)
    for _ in range(40):
        new = step(cell, torch.zeros(3, 4, dtype=F64), (h,))[0]
        assert (new.abs() < h.abs()).all()
        h = new


def test_indrnn_is_a_product_of_its_recurrent_weights():
    """Li et al. 2018: each neuron recurs on itself only; with ReLU, no input and
    h_0 > 0, h_T = u^T * h_0."""
    cell = make("indrnn", scale=1.0)
    with torch.no_grad():
        cell.weight_hh.copy_(torch.rand(5, dtype=F64) * 0.9 + 0.1)
        cell.bias_ih.zero_(), cell.bias_hh.zero_()
    h0 = torch.rand(2, 5, dtype=F64) + 0.5
    y, (h,) = cell.loop(torch.zeros(2, 12, 4, dtype=F64), (h0,))
    torch.testing.assert_close(h, cell.weight_hh ** 12 * h0, rtol=1e-13, atol=0)
    assert CELLS["indrnn"].cls.jacobian_structure == "diag"


def test_fastrnn_residual_weights_start_as_the_authors():
    """Kusupati et al. 2018: h_t = alpha h~_t + beta h_{t-1}, alpha, beta = sigmoid(raw)
    starting at alpha ~ 0.05, beta ~ 0.95; with U = 0 and no input, h_T = beta^T h_0."""
    cell = CELLS["fastrnn"].cls(4, 5).double()
    beta = torch.sigmoid(cell.beta)
    assert abs(torch.sigmoid(cell.alpha).item() - 0.0474) < 1e-3 and abs(beta.item() - 0.9526) < 1e-3
    with torch.no_grad():
        cell.weight_hh.zero_(), cell.bias_ih.zero_(), cell.bias_hh.zero_()
    h0 = torch.randn(2, 5, dtype=F64)
    _, (h,) = cell.loop(torch.zeros(2, 9, 4, dtype=F64), (h0,))
    torch.testing.assert_close(h, beta ** 9 * h0, rtol=1e-13, atol=0)


def test_fastgrnn_step_is_the_papers():
    """Kusupati et al. 2018: gate and candidate share W and U."""
    cell = make("fastgrnn")
    x, h0 = torch.randn(3, 4, dtype=F64), torch.randn(3, 5, dtype=F64)
    pre = x @ cell.weight_ih.T + h0 @ cell.weight_hh.T
    b_z, b_h = (cell.bias_ih + cell.bias_hh).chunk(2)
    z, cand = torch.sigmoid(pre + b_z), torch.tanh(pre + b_h)
    zeta, nu = torch.sigmoid(cell.zeta), torch.sigmoid(cell.nu)
    torch.testing.assert_close(step(cell, x, (h0,))[0], (zeta * (1 - z) + nu) * cand + z * h0,
                               rtol=1e-13, atol=1e-14)


def test_intersection_rnn_output_is_a_highway():
    """Collins et al. 2017: y_t = g_y x_t + (1 - g_y) relu(.); an open y-gate passes x_t
    through unchanged, whatever h holds. y has the input's width, h its own."""
    cell = make("intersection_rnn", input_size=4, hidden_size=6)
    with torch.no_grad():
        cell.bias_ih[4 + 6:4 + 6 + 4] = 60.0  # the y-gate's rows come after d (I) and r (H)
    x, h0 = torch.randn(2, 5, 4, dtype=F64), torch.randn(2, 6, dtype=F64)
    y, (y_last, h) = cell.loop(x, (torch.zeros(2, 4, dtype=F64), h0))
    torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    assert h.shape == (2, 6) and torch.equal(y_last, y[:, -1])


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


def test_mgu_candidate_reads_the_gated_state():
    """Zhou et al. 2016: h~ = tanh(W_h x + U_h (f * h) + b)."""
    cell = make("mgu")
    x, h0 = torch.randn(3, 4, dtype=F64), torch.randn(3, 5, dtype=F64)
    (w_f, w_h), (u_f, u_h) = cell.weight_ih.chunk(2), cell.weight_hh.chunk(2)
    (bi_f, bi_h), (bh_f, bh_h) = cell.bias_ih.chunk(2), cell.bias_hh.chunk(2)
    f = torch.sigmoid(x @ w_f.T + bi_f + h0 @ u_f.T + bh_f)
    cand = torch.tanh(x @ w_h.T + bi_h + (f * h0) @ u_h.T + bh_h)
    torch.testing.assert_close(step(cell, x, (h0,))[0], (1 - f) * h0 + f * cand,
                               rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name, bad", [("antisymmetric_rnn", dict(epsilon=0)),
                                       ("cornn", dict(dt=-1.0)), ("lem", dict(dt=1.5)),
                                       ("indrnn", dict(nonlinearity="gelu")),
                                       ("fastgrnn", dict(gate_nonlinearity="softmax"))])
def test_bad_options_name_the_argument(name, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CELLS[name].cls(4, 5, **bad)
